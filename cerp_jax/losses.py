"""Loss terms of CERP training (spec §3, §4.2). Each equation lives here and nowhere else."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bpr_loss(scores: jax.Array, group_mask: jax.Array) -> jax.Array:
  """Grouped BPR (spec §4.2): ``(1/G) Σ_g Σ_j −log σ(ŷ_pos − ŷ_neg_j)``.

  Summed over the K negatives of a group, averaged over the G real (unpadded) groups. Computed as
  ``softplus(ŷ_neg − ŷ_pos)``, finite for any margin.

  Args:
    scores: ``[G, 1 + K]`` float32, column 0 the positive.
    group_mask: ``[G]`` bool, False for padding.

  Returns:
    scalar float32.
  """
  per_group = jnp.sum(jax.nn.softplus(scores[:, 1:] - scores[:, :1]), axis=-1)
  w = group_mask.astype(scores.dtype)
  return jnp.sum(per_group * w) / jnp.maximum(jnp.sum(w), 1.0)


def pruning_regularizer(rows: jax.Array, row_mask: jax.Array, eta: float) -> jax.Array:
  """The CERP regularizer ``−Σ_rows Σ_k tanh²(η·e_k)`` (spec §3), a sum (not a mean).

  Args:
    rows: ``[R, d]`` composed (pruned) embeddings of the batch (one user row per group plus every
      item row, DECISIONS.md).
    row_mask: ``[R]`` bool, False for padding.
    eta: η (100 in the original, ``--K``).

  Returns:
    scalar float32 ≤ 0.
  """
  t = jnp.tanh(eta * rows) ** 2
  return -jnp.sum(t * row_mask[:, None].astype(rows.dtype))


def l2_penalty(user_vecs: jax.Array, item_vecs: jax.Array, group_mask: jax.Array,
               coefficient: float) -> jax.Array:
  """``λ · (Σ_g ‖e_u‖² + Σ_{g,j} ‖e_i‖²) / G`` over the batch's composed embeddings.

  With one negative this is LightGCN-PyTorch's ``(‖u‖²+‖p‖²+‖n‖²)/B`` times λ (DECISIONS.md sets
  λ = 1e-4 × ½ for MF retraining); spec §4.2's stage-1 default λ is 0.

  Args:
    user_vecs: ``[G, d]``; item_vecs: ``[G, M, d]``; group_mask: ``[G]`` bool.
  """
  w = group_mask.astype(user_vecs.dtype)
  sq = jnp.sum(user_vecs ** 2, -1) + jnp.sum(item_vecs ** 2, axis=(-2, -1))
  return coefficient * jnp.sum(sq * w) / jnp.maximum(jnp.sum(w), 1.0)


def regularizer_rows(user_vecs: jax.Array, item_vecs: jax.Array, group_mask: jax.Array,
                     user_mask=None):
  """Rows the regularizer sums over: one user row per group (or those of ``user_mask``, e.g. the
  batch's unique users for LightGCN), then all item rows (spec §3; DECISIONS.md)."""
  g, m, d = item_vecs.shape
  rows = jnp.concatenate([user_vecs, item_vecs.reshape(g * m, d)])
  umask = group_mask if user_mask is None else user_mask
  mask = jnp.concatenate([umask, jnp.repeat(group_mask, m)])
  return rows, mask
