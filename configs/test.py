"""Tiny config for tests: synthetic LightGCN-format data in a temp dir (set data.path), seconds."""

from configs import default


def get_config(arg: str = ""):
  c = default.get_config(arg)
  c.data.name = "synthetic"
  c.data.path = "/nonexistent"   # tests point this at a temp dir.
  c.model.dim = 8
  c.model.bucket_size = 16
  c.model.threshold_init = -3.0
  c.target_sparsities = (0.25, 0.4)
  c.prune.max_epochs = 25
  c.prune.steps_per_block = 16
  c.prune.lr = 1e-2             # thresholds rise ~0.01/step: pruning within seconds.
  c.retrain.groups_per_step = 64
  c.retrain.max_epochs = 4
  c.retrain.steps_per_block = 8
  c.eval.every_epochs = 2
  c.eval.patience = 2
  c.eval.batch_size = 32
  c.progress_bar = False
  c.checkpoint_every_steps = 1_000_000
  return c
