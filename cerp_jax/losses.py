"""Loss terms of CERP training: BPR, the pruning regularizer, L2 (docs/algorithm.md, Loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def bpr_loss(scores: jax.Array, group_mask: jax.Array) -> jax.Array:
  """Grouped BPR ``(1/G) Σ_g Σ_j softplus(ŷ_neg_j − ŷ_pos)`` over the G unmasked groups, finite:
  ``scores [G, 1+K]`` float32 (column 0 the positive), ``group_mask [G]`` bool → scalar."""
  per_group = jnp.sum(jax.nn.softplus(scores[:, 1:] - scores[:, :1]), axis=-1)
  w = group_mask.astype(scores.dtype)
  return jnp.sum(per_group * w) / jnp.maximum(jnp.sum(w), 1.0)


def pruning_regularizer(rows: jax.Array, row_mask: jax.Array, eta: float) -> jax.Array:
  """``−Σ_rows Σ_k tanh²(η·e_k)``, a sum (not a mean): ``rows [R, d]`` float32 composed pruned
  embeddings, ``row_mask [R]`` bool (False: padding), η (100 in the authors' code) → scalar ≤ 0."""
  t = jnp.tanh(eta * rows) ** 2
  return -jnp.sum(t * row_mask[:, None].astype(rows.dtype))


def l2_penalty(user_vecs: jax.Array, item_vecs: jax.Array, group_mask: jax.Array,
               coefficient: float) -> jax.Array:
  """``λ·(Σ_g ‖e_u‖² + Σ_{g,j} ‖e_i‖²)/G`` over the unmasked groups: ``user_vecs [G, d]``,
  ``item_vecs [G, M, d]`` float32, ``group_mask [G]`` bool, λ = ``coefficient`` → scalar."""
  w = group_mask.astype(user_vecs.dtype)
  sq = jnp.sum(user_vecs ** 2, -1) + jnp.sum(item_vecs ** 2, axis=(-2, -1))
  return coefficient * jnp.sum(sq * w) / jnp.maximum(jnp.sum(w), 1.0)


def regularizer_rows(user_vecs: jax.Array, item_vecs: jax.Array, group_mask: jax.Array,
                     user_mask=None):
  """``([G + G·M, d], [G + G·M] bool)``: the user rows (mask ``user_mask``, default ``group_mask``;
  LightGCN passes the batch's first occurrences) then every item row, duplicates kept."""
  g, m, d = item_vecs.shape
  rows = jnp.concatenate([user_vecs, item_vecs.reshape(g * m, d)])
  umask = group_mask if user_mask is None else user_mask
  mask = jnp.concatenate([umask, jnp.repeat(group_mask, m)])
  return rows, mask
