"""Backbones (MF, NCF-style MLP) and the recommender that joins an embedding to a backbone.

A backbone never reads embedding parameters: it takes composed user and item vectors and returns
scores (DESIGN.md). Two entry points per backbone:

* ``__call__(user_vecs [..., d], item_vecs [..., d], train, mask) -> [...]`` scores of paired rows;
* ``score_matrix(user_vecs [B, d], item_vecs [I, d]) -> [B, I]`` for full ranking (eval mode).
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


class MF(nn.Module):
  """Matrix factorisation: score = ⟨e_u, e_i⟩ (not in the original code; DECISIONS.md, Backbones)."""

  def __call__(self, user_vecs, item_vecs, train: bool = False, mask=None):
    del train, mask
    return jnp.sum(user_vecs * item_vecs, axis=-1)

  def score_matrix(self, user_vecs, item_vecs):
    return user_vecs @ item_vecs.T


def _torch_bias_init(fan_in: int):
  """torch.nn.Linear's default bias init U(±1/√fan_in)."""
  bound = 1.0 / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class NCFMLP(nn.Module):
  """The paper's NCF-style MLP backbone (spec §4.4; torchfm ``MultiLayerPerceptron``).

  ``x = [e_u ; e_i] / nnz(x)`` (the original divides the input by its own count of non-zero entries,
  with no gradient through the count; we use ``max(nnz, 1)`` so a fully pruned pair gives 0, never
  NaN), then ``num_layers`` blocks of Linear (Xavier-uniform weights, torch-default biases) →
  BatchNorm (eps 1e-5, torch momentum 0.1) → ReLU → Dropout, widths ``in·2^(l+1)``
  (256 → 512 → 1024 → 2048 for d = 128), and a final Linear to one raw score.

  Attributes:
    num_layers: hidden blocks (3).
    dropout: dropout rate (0.0 in the original).
    eval_item_chunk: items scored per chunk in ``score_matrix`` (bounds memory to
      ``B·chunk·widest`` floats).
  """

  num_layers: int = 3
  dropout: float = 0.0
  eval_item_chunk: int = 2048

  def _mlp(self, x, train: bool, mask=None):
    in_dim = x.shape[-1]
    width = in_dim
    for l in range(self.num_layers):
      fan_in = width
      width = in_dim * 2 ** (l + 1)
      x = nn.Dense(width, kernel_init=nn.initializers.xavier_uniform(),
                   bias_init=_torch_bias_init(fan_in), name=f"dense_{l}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                       name=f"bn_{l}")(x, mask=mask)
      x = nn.relu(x)
      if self.dropout > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(1, kernel_init=nn.initializers.xavier_uniform(), bias_init=_torch_bias_init(width),
                 name="out")(x)
    return x[..., 0]

  @staticmethod
  def _input(user_vecs, item_vecs):
    x = jnp.concatenate([user_vecs, item_vecs], axis=-1)
    nnz = jax.lax.stop_gradient(jnp.count_nonzero(x, axis=-1, keepdims=True)).astype(x.dtype)
    return x / jnp.maximum(nnz, 1.0)

  @nn.compact
  def __call__(self, user_vecs, item_vecs, train: bool = False, mask=None):
    """Scores of paired rows ``[..., d]`` → ``[...]``; ``mask [...]`` bool excludes padded rows from the
    BatchNorm batch statistics."""
    user_vecs = jnp.broadcast_to(user_vecs, item_vecs.shape)
    x = self._input(user_vecs, item_vecs)
    lead = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])
    m = None if mask is None else jnp.broadcast_to(mask, lead).reshape(-1, 1)
    return self._mlp(x, train, m).reshape(lead)

  def score_matrix(self, user_vecs, item_vecs):
    """``[B, d] × [I, d] → [B, I]`` scores in eval mode, items in chunks of ``eval_item_chunk``."""
    num_items = item_vecs.shape[0]
    chunk = min(self.eval_item_chunk, num_items)
    pad = -num_items % chunk
    items = jnp.pad(item_vecs, ((0, pad), (0, 0))).reshape(-1, chunk, item_vecs.shape[-1])

    def one(chunk_vecs):
      u = jnp.broadcast_to(user_vecs[:, None, :], (user_vecs.shape[0], chunk, user_vecs.shape[-1]))
      i = jnp.broadcast_to(chunk_vecs[None], u.shape)
      return self(u, i, train=False)

    scores = jax.lax.map(one, items)  # [n_chunks, B, chunk]
    return jnp.moveaxis(scores, 0, 1).reshape(user_vecs.shape[0], -1)[:, :num_items]


def make_backbone(config) -> nn.Module:
  mc = config.model
  if mc.backbone == "mf":
    return MF()
  if mc.backbone == "mlp":
    return NCFMLP(num_layers=mc.mlp_num_layers, dropout=mc.mlp_dropout,
                  eval_item_chunk=mc.mlp_eval_item_chunk)
  raise ValueError(f"config.model.backbone={mc.backbone!r}: expected 'mf' or 'mlp'")


class Recommender(nn.Module):
  """Embedding + backbone over the shared user/item id space (items offset by ``num_users``).

  Attributes:
    embedding: a module of the embeddings interface (``cerp_jax.embeddings``).
    backbone: MF or NCFMLP.
    num_users: U; item ``i`` is entity ``U + i``.
  """

  embedding: nn.Module
  backbone: nn.Module
  num_users: int

  def __call__(self, users, items, train: bool = False, group_mask: Optional[jax.Array] = None):
    """Scores of one batch of groups.

    Args:
      users: ``[G] int32`` user ids.
      items: ``[G, M] int32`` item ids (column 0 the positive, then the negatives).
      train: BatchNorm in training mode.
      group_mask: ``[G] bool``, False for padded groups.

    Returns:
      scores ``[G, M]`` float32, user vectors ``[G, out_dim]``, item vectors ``[G, M, out_dim]``
      (the composed, pruned embeddings the regularizer and L2 use), and the effective tables of this
      forward (``embedding.tables()``, counted for the pruning schedule).
    """
    g, m = items.shape
    ids = jnp.concatenate([users, (items + self.num_users).reshape(-1)])
    tables = self.embedding.tables()
    vecs = self.embedding.compose(tables, ids)
    user_vecs, item_vecs = vecs[:g], vecs[g:].reshape(g, m, -1)
    mask = None if group_mask is None else jnp.broadcast_to(group_mask[:, None], (g, m))
    scores = self.backbone(user_vecs[:, None, :], item_vecs, train=train, mask=mask)
    return scores, user_vecs, item_vecs, tables

  def tables(self):
    return self.embedding.tables()

  def entity_vectors(self):
    """``[N, out_dim]`` composed vectors of all entities."""
    return self.embedding.embed_all()

  def score_users(self, user_vecs, item_vecs):
    """``[B, out] × [I, out] → [B, I]`` full-ranking scores (eval mode)."""
    return self.backbone.score_matrix(user_vecs, item_vecs)
