"""Small CPU config: CERP + LightGCN on the raw MovieLens-100K, minutes on 2 cores.

NOT the paper's thresholds: they start at −8 (not −100) so stage 1 prunes within this short run
(with −100 pruning needs ~90 k full-propagation steps); the prune log line and eval.json say so.
b = 1024, d = 64 as ml100k_mf.py.
"""

from configs import default
from configs import gowalla_lightgcn


def get_config(arg: str = ""):
  c = default.get_config(arg)
  c.data.name = "ml100k"
  c.data.format = "ml100k"
  c.data.path = "movielens-100k"
  gowalla_lightgcn.lightgcn_settings(c, "parity" in arg)
  c.model.dim = 64
  c.model.bucket_size = 1024
  c.model.threshold_init = -8.0
  c.target_sparsities = (0.5, 0.7)
  c.prune.max_epochs = 30
  c.prune.steps_per_block = 200
  c.retrain.groups_per_step = 1024
  c.retrain.max_epochs = 200
  c.eval.every_epochs = 5
  c.eval.patience = 3
  return c
