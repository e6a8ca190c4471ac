"""Tiny sweep for the tests: synthetic LightGCN-format data in a temp dir (set data.path), seconds.

Budgets 20 % and 40 % of a float32 [N, 32] table; every method, one seed, one learning rate.
Thresholds start at −3 (CERP and PEP) so stage 1 prunes within seconds.
"""

from configs import sweep_gowalla_mf
from configs import test as test_cfg


def get_config(arg: str = ""):
  c = test_cfg.get_config(arg)
  c.model.pep_threshold_init = -3.0
  c.prune.max_epochs = 40
  c.retrain.groups_per_step = 64
  c.retrain.max_epochs = 8
  c.eval.every_epochs = 2
  c.eval.patience = 2
  sweep_gowalla_mf.sweep_settings(c, budgets=(0.2, 0.4), reference_dim=32, seeds=(0,), lrs=(1e-2,))
  return c
