"""Memory–accuracy frontier on Gowalla with the LightGCN backbone, runnable on a 2-core CPU.

  python sweep.py --config=configs/sweep_gowalla_lightgcn.py --workdir=runs/sweep_gowalla_lightgcn
  python sweep.py --config=configs/sweep_gowalla_lightgcn.py:paper …   # the paper's protocol (GPU)

Every method (full table at smaller d, QR, hashing, PEP, CERP, and magnitude pruning of the trained
d = 128 reference, which retrains nothing; LightGCN propagates the pruned layer-0 table) at 2.5 %,
5 % and 10 % of the full float32 [N, 128] table, sized by cerp_jax/budget.py, seeds 3407 and 3408,
with full-table references at d = 128 and d = 64 (LightGCN's own width). Every run takes the
``:cpu`` recipe of configs/gowalla_lightgcn.py (16,384 triples per step, Adam 1e-2 on a cosine
decay over ≤ 120 epochs, validation NDCG@20 every 4 epochs, patience 5); CERP and PEP first run its
fast stage 1 (2,048 groups per step, a full propagation each). ``:paper`` takes the paper's stage 1
and LightGCN-PyTorch's stage 2 instead (hours per run on a CPU: a GPU job). The sweep resumes: rerun
the same command.
"""

from configs import gowalla_lightgcn
from configs import sweep_gowalla_mf


def get_config(arg: str = ""):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a != "paper":
      raise ValueError(f"unknown config argument {a!r}: expected 'paper' or nothing")
  c = gowalla_lightgcn.get_config("" if "paper" in args else "cpu")
  c.model.dim = 128
  # the lr grid is the recipe's own stage-2 lr (1e-2 for :cpu, 1e-3 for :paper): sweep_settings'
  # default grid (1e-3) would silently replace it
  sweep_gowalla_mf.sweep_settings(c, budgets=(0.025, 0.05, 0.1), seeds=(3407, 3408),
                                  lrs=(c.retrain.lr,))
  c.sweep.extra_reference_dims = (64,)
  return c
