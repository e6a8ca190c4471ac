"""Quick start: CERP + MF on the raw MovieLens-100K in ../shared/data, both stages in about a minute
on 2 CPU cores (then `python eval.py --workdir=…` packs and evaluates in seconds).

Not a study: stage 1 takes 200 groups per step at lr 1e-2 from thresholds at −4 so that it reaches
sparsity 0.5 within a few epochs, and stage 2 retrains for at most 30 epochs. configs/ml100k_mf.py
is the same model with the project's defaults (minutes).
"""

from configs import ml100k_mf


def get_config(arg: str = ""):
  c = ml100k_mf.get_config(arg)
  c.target_sparsities = (0.5,)
  c.model.threshold_init = -4.0
  c.prune.groups_per_step = 200
  c.prune.lr = 1e-2
  c.prune.max_epochs = 20
  c.prune.steps_per_block = 100
  c.retrain.max_epochs = 30
  c.eval.every_epochs = 5
  c.eval.patience = 3
  return c
