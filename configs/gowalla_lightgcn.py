"""CERP with the LightGCN backbone on Gowalla, the paper's settings.

Stage 1: 10 groups × (1+5) per step with a full 3-layer propagation over the ~1.6 M edges at every
step, thresholds from −100 (≈ 100 k steps before pruning starts): minutes on a GPU, ~1 s/step on a
2-core CPU. Stage 2: LightGCN-PyTorch's recipe — 2048 (user, positive, negative) triples per step, Adam
1e-3, L2 1e-4 × ½ on the batch's layer-0 embeddings, no clipping, evaluation every 10 epochs.
Reference: ``:full`` with ``--config.model.dim=64`` is LightGCN itself (published 0.1830 / 0.1554).
"""

from configs import default


def get_config(arg: str = ""):
  c = default.get_config(arg)
  c.data.name = "gowalla"
  c.data.path = "gowalla"
  lightgcn_settings(c, "parity" in arg)
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
