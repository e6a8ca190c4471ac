"""Memory–accuracy frontier on Gowalla with the LightGCN backbone (meant for a GPU).

  python sweep.py --config=configs/sweep_gowalla_lightgcn.py --workdir=runs/sweep_gowalla_lightgcn

Same methods, budgets (of the full float32 [N, 128] table) and solver as the MF sweep; every method
takes LightGCN's stage-2 recipe (2048 triples/step, Adam 1e-3, L2 1e-4·½, ≤ 1000 epochs,
validation NDCG@20 every 10 epochs, patience 3); CERP and PEP first run stage 1 with a full
propagation per step; magnitude prunes the trained d = 128 reference (LightGCN propagates the
pruned layer-0 table). Full-table references at d = 128 and d = 64 (LightGCN's own width); budgets
2.5 %, 5 %, 10 %; seeds 3407 and 3408. On a 2-core CPU a single run takes hours: use a GPU.
"""

from configs import gowalla_lightgcn
from configs import sweep_gowalla_mf


def get_config(arg: str = ""):
  c = gowalla_lightgcn.get_config(arg)
  c.model.dim = 128
  sweep_gowalla_mf.sweep_settings(c, budgets=(0.025, 0.05, 0.1), seeds=(3407, 3408))
  c.sweep.extra_reference_dims = (64,)
  return c
