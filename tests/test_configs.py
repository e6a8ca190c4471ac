"""Every shipped config loads with its documented arguments and passes the checks train.py and
sweep.py run before anything is written (no data needed)."""

import importlib

import pytest

from cerp_jax import sweep
from cerp_jax import workdir as workdir_lib

CONFIGS = [("default", ""), ("gowalla_mf", ""), ("gowalla_mf", "fast"), ("gowalla_mf", "parity"),
           ("gowalla_mlp", "fast"), ("gowalla_lightgcn", ""), ("gowalla_lightgcn", "cpu"),
           ("gowalla_lightgcn", "cpu,full"), ("gowalla_lightgcn", "parity"),
           ("ml100k_mf", ""), ("ml100k_lightgcn", ""), ("ml1m_lightgcn", ""),
           ("amazon_book_lightgcn", ""), ("quickstart", "")]


@pytest.mark.parametrize("module,arg", CONFIGS)
def test_config_loads_and_validates(module, arg):
  c = importlib.import_module(f"configs.{module}").get_config(arg)
  workdir_lib.validate_config(c)


@pytest.mark.parametrize("module,arg", [("sweep_gowalla_mf", ""), ("sweep_gowalla_lightgcn", ""),
                                        ("sweep_gowalla_lightgcn", "paper")])
def test_sweep_config_validates(module, arg):
  c = importlib.import_module(f"configs.{module}").get_config(arg)
  workdir_lib.validate_config(c)
  sweep.validate_sweep_config(c)


def test_lightgcn_cpu_preset():
  """:cpu changes only the protocol knobs its docstring names; the paper's model stays."""
  from configs import gowalla_lightgcn  # pylint: disable=g-import-not-at-top
  paper, cpu = gowalla_lightgcn.get_config(""), gowalla_lightgcn.get_config("cpu")
  assert (cpu.retrain.groups_per_step, cpu.retrain.lr, cpu.retrain.lr_schedule) == (
      16_384, 1e-2, "cosine")
  assert cpu.prune.gamma_init == pytest.approx(10 / cpu.prune.groups_per_step)
  assert cpu.model.threshold_init_scale > 0 and cpu.prune.gk_ramp_steps > 0
  for field in ("dim", "bucket_size", "gcn_num_layers", "embedding", "threshold_init"):
    assert cpu.model[field] == paper.model[field]
  assert (cpu.prune.eta, cpu.prune.num_negatives) == (paper.prune.eta, paper.prune.num_negatives)
  from configs import sweep_gowalla_lightgcn  # pylint: disable=g-import-not-at-top
  assert sweep_gowalla_lightgcn.get_config("").retrain.lr_schedule == "cosine"
  assert sweep_gowalla_lightgcn.get_config("paper").retrain.lr_schedule == "constant"
  # every sweep run trains with its recipe's own lr (run_config sets retrain.lr from the grid)
  from cerp_jax import sweep as sweep_lib  # pylint: disable=g-import-not-at-top
  for arg, recipe in (("", cpu), ("paper", paper)):
    sc = sweep_gowalla_lightgcn.get_config(arg)
    assert sc.sweep.lrs == (recipe.retrain.lr,)
    setting = sweep_lib.plan(sc, 70_839)[0]
    assert sweep_lib.run_config(sc, setting, 3407, sc.sweep.lrs[0]).retrain.lr == recipe.retrain.lr


@pytest.mark.parametrize("module,arg,match", [
    ("gowalla_lightgcn", "gpu", "'gpu': expected 'parity', 'full', 'fast' and/or 'cpu'"),
    ("sweep_gowalla_lightgcn", "cpu", "'cpu': expected 'paper' or nothing"),
    ("gowalla_mf", "cpu", "unknown config argument 'cpu'"),
])
def test_unknown_config_argument_refused(module, arg, match):
  with pytest.raises(ValueError, match=match):
    importlib.import_module(f"configs.{module}").get_config(arg)
