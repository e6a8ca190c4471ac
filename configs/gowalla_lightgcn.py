"""CERP with the LightGCN backbone on Gowalla, the paper's settings, and ``:cpu``, a recipe that makes
the paper's backbone a normal 2-core CPU job.

Paper settings (the default): stage 1 takes 10 groups × (1+5) per step with a full 3-layer
propagation over the ~1.5 M edges at every step, thresholds from −100 (≈ 100 k steps before pruning
starts): minutes on a GPU, hours here. Stage 2 is LightGCN-PyTorch's recipe: 2048 (user, positive,
negative) triples per step, Adam 1e-3, L2 1e-4 × ½ on the batch's layer-0 embeddings, no clipping,
evaluation every 10 epochs. Reference: ``:full`` with ``--config.model.dim=64`` is LightGCN itself
(published 0.1830 / 0.1554 test Recall@20 / NDCG@20, trained on all of train.txt).

``:cpu`` (docs/results/gowalla_lightgcn.md) changes the protocol, since every step costs one full
propagation whatever its batch:

- stage 2 / full table: 16,384 triples per step (45 steps per epoch), Adam 1e-2 on a cosine decay to
  0 over 120 epochs, validation every 4 epochs, patience 5;
- stage 1: 2,048 groups per step with the regularizer's γ scaled by 10/2,048 (its weight against
  BPR as at the paper's 10 groups), Adam 3e-3, thresholds from the weights' scale (``:fast``), their
  own coupled decay 1e-3 and the multiplier ramp gk = 1 + step/2,000.

Combine with ``full`` (``:cpu,full``) for the full table, and ``parity`` for the authors' protocol.
"""

from configs import default


def get_config(arg: str = ""):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ("parity", "full", "fast", "cpu"):
      raise ValueError(f"unknown config argument {a!r}: expected 'parity', 'full', 'fast' and/or "
                       "'cpu'")
  c = default.get_config(",".join(a for a in args if a != "cpu"))
  c.data.name = "gowalla"
  c.data.path = "gowalla"
  lightgcn_settings(c, "parity" in args)
  if "cpu" in args:
    cpu_settings(c)
  return c


def cpu_settings(c):
  """``:cpu``: large-batch stage 2 on a cosine schedule and a fast stage 1 (module docstring)."""
  c.retrain.groups_per_step = 16_384
  c.retrain.lr = 1e-2
  c.retrain.lr_schedule = "cosine"
  c.retrain.max_epochs = 120
  c.retrain.steps_per_block = 15        # 3 blocks per 45-step epoch
  c.eval.every_epochs = 4
  c.eval.patience = 5
  c.model.threshold_init_scale = 0.0075  # :fast
  c.prune.groups_per_step = 2048
  c.prune.gamma_init = 10 / 2048        # γ per 10 groups, as at the paper's batch
  c.prune.lr = 3e-3
  c.prune.threshold_weight_decay = 1e-3
  c.prune.gk_ramp_steps = 2000
  c.prune.steps_per_block = 20
  return c


def lightgcn_settings(c, parity: bool = False):
  """The LightGCN stage-2 recipe (LightGCN-PyTorch's) on top of a default config."""
  c.model.backbone = "lightgcn"
  c.model.gcn_num_layers = 3
  c.prune.steps_per_block = 50
  c.retrain.groups_per_step = 2048
  c.retrain.num_negatives = 1
  c.retrain.l2_penalty = 5e-5    # LightGCN-PyTorch's decay 1e-4 × ½‖·‖²
  c.retrain.lr = 1e-3
  c.retrain.weight_decay = 0.0
  c.retrain.grad_clip = 0.0
  c.retrain.max_epochs = 1000
  c.retrain.steps_per_block = 16
  c.eval.every_epochs = 10
  c.eval.patience = 3
  c.eval.batch_size = 1024
  c.checkpoint_every_steps = 2000
  if parity:
    c.sampling.triples_per_positive = 5  # the authors' 5 triples per sampled (user, positive), fixed
    c.eval.timing = "start"  # the LightGCN code evaluates before epochs 0, 10, 20, …
    c.seed = 2020
  return c
