"""CERP + MF on the real MovieLens-100K (raw u.data, seeded per-user 80/20 split): minutes on CPU.

Not the paper's threshold init: thresholds start at −8 instead of −100, so that stage 1 prunes
within a few epochs of this small dataset (from −100, pruning starts only after ~90 k steps).
b = 1024 (2bd = 78 % of the full table): at smaller b, MF on this dataset falls below a most-popular
ranking. Everything else follows the defaults.
"""

from configs import default


def get_config(arg: str = ""):
  c = default.get_config(arg)
  c.data.name = "ml100k"
  c.data.format = "ml100k"
  c.data.path = "movielens-100k"
  c.model.dim = 64
  c.model.bucket_size = 1024
  c.model.threshold_init = -8.0
  c.target_sparsities = (0.5, 0.6)  # MF here saturates near 0.77 sparsity within 30 epochs.
  c.prune.max_epochs = 30
  c.retrain.groups_per_step = 1024
  c.retrain.max_epochs = 80
  c.eval.every_epochs = 5
  c.eval.patience = 5
  c.eval.batch_size = 1024
  return c
