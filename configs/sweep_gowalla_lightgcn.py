"""Memory–accuracy frontier on Gowalla with the LightGCN backbone (meant for a GPU).

  python sweep.py --config=configs/sweep_gowalla_lightgcn.py --workdir=runs/sweep_gowalla_lightgcn

Same methods, budgets (of the full float32 [N, 128] table) and solver as the MF sweep; every method
takes LightGCN's stage-2 recipe (2048 triples/step, Adam 1e-3, L2 1e-4·½, ≤ 1000 epochs,
validation NDCG@20 every 10 epochs, patience 3); CERP and PEP first run stage 1 with a full
propagation per step. On a 2-core CPU a single run takes hours: use a GPU.
"""

from configs import gowalla_lightgcn
from configs import sweep_gowalla_mf


def get_config(arg: str = ""):
  c = gowalla_lightgcn.get_config(arg)
  c.model.dim = 128
  return sweep_gowalla_mf.sweep_settings(c)
