"""cerp_jax's side of the parity study: `:parity` on the raw MovieLens-100K, both paper backbones.

``--config=benchmarks/parity/config.py:mlp`` or ``:lightgcn``; add ``,full`` for the full-table
reference under the same protocol. Always the parity preset (fixed negatives, the original's
epoch, no validation split, test NDCG@5 selection every 5 (MLP) / 10 (LightGCN) epochs, patience 3,
per-metric maxima). b = 1024, d = 64 as the project's ML-100K configs; the thresholds start at
``model.threshold_init`` (−8 here, NOT the paper's −100; the harness passes the same value to the
original's ``--threshold_init`` and every output says so).
"""

from configs import default
from configs import gowalla_mlp
from configs import ml100k_lightgcn
from configs import ml100k_mf


def get_config(arg: str = "mlp"):
  parts = [a for a in (arg or "mlp").split(",") if a]
  backbone = parts[0]
  preset = ",".join(["parity", *[p for p in parts[1:] if p == "full"]])
  if backbone == "lightgcn":
    c = ml100k_lightgcn.get_config(preset)  # seed 2020, 5 triples per positive in stage 2
    c.retrain.groups_per_step = 2048  # the original's LightGCN recipe (ML-100K's config: 1024)
    c.eval.every_epochs = 10          # the original's (ML-100K's config: 5)
  elif backbone == "mlp":
    c = ml100k_mf.get_config(preset)
    gowalla_mlp.mlp_settings(c)  # the original's NCF-MLP recipe
    c.retrain.steps_per_block = 500
    c.eval.every_epochs = 5
    c.eval.batch_size = 64
  else:
    raise ValueError(f"backbone {backbone!r}: expected 'mlp' or 'lightgcn'")
  default.apply_parity(c)
  c.target_sparsities = (0.5, 0.8)
  c.model.threshold_init = -8.0
  c.prune.max_epochs = 30
  c.eval.user_sample = 0
  c.eval.test_user_sample = 0
  c.checkpoint_every_steps = 20_000
  c.progress_bar = False
  return c
