"""Embeddings behind one interface: CERP (compositional, soft-threshold pruned) and the full table.

Every embedding is a ``flax.linen`` module with the same face:

* ``__call__(ids)``: ``[n] int32`` entity ids (users ``0..U-1``, items ``U..U+I-1``) → ``[n, out_dim]``
  float32 composed vectors;
* ``embed_all()``: ``[N, out_dim]`` vectors of all N entities;
* ``tables()``: the effective (pruned or masked) tables that get counted and packed, a dict of arrays;
* ``prunable``: names of the tables that carry soft thresholds (``S_<name>`` params) in prune mode.

Modes: ``'prune'`` (stage 1: learnable soft thresholds), ``'retrain'`` (stage 2: fixed 0/1 masks from a
``'masks'`` variable collection, no thresholds), ``'dense'`` (no pruning at all).

The baselines (QR, hashing, PEP) implement the same face in :mod:`cerp_jax.baselines`;
:func:`cerp_jax.models.make_embedding` builds the one a config names.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

PRUNE, RETRAIN, DENSE = "prune", "retrain", "dense"


class BucketSizeError(ValueError):
  """The bucket size b leaves two entities with the same (quotient, remainder) pair."""


def quotient_divisor(num_entities: int, bucket_size: int) -> int:
  """c = ceil(N / b), the divisor of the quotient index."""
  return -(-num_entities // bucket_size)


def smallest_valid_bucket_size(num_entities: int) -> int:
  """Smallest b with ceil(N/b) ≤ b, i.e. unique (q, r) pairs for all N entities."""
  b = max(1, math.isqrt(max(num_entities - 1, 0)))
  while quotient_divisor(num_entities, b) > b:
    b += 1
  while b > 1 and quotient_divisor(num_entities, b - 1) <= b - 1:
    b -= 1
  return b


def check_bucket_size(num_entities: int, bucket_size: int) -> None:
  """Refuses a bucket size whose (quotient, remainder) pairs collide.

  With r = id mod b and q = id div c, c = ceil(N/b), the pairs are unique iff c ≤ b.

  Raises:
    BucketSizeError: naming the smallest valid b.
  """
  if bucket_size < 1:
    raise BucketSizeError(f"bucket_size must be ≥ 1, got {bucket_size}")
  c = quotient_divisor(num_entities, bucket_size)
  if c > bucket_size:
    raise BucketSizeError(
        f"bucket_size b={bucket_size} gives quotient divisor ceil(N/b)={c} > b for N={num_entities} "
        f"entities, so some entities share a (quotient, remainder) pair and hence an embedding; the "
        f"smallest valid b is {smallest_valid_bucket_size(num_entities)}")


def cerp_indices(ids: jax.Array, num_entities: int, bucket_size: int) -> tuple[jax.Array, jax.Array]:
  """Remainder and quotient indices of entity ids (CERP's complementary partitions).

  Args:
    ids: ``[...] int32`` entity ids in ``[0, N)``.

  Returns:
    ``(r, q)``: ``r = id mod b`` indexes P, ``q = id div ceil(N/b)`` indexes Q; same shape as ids.
  """
  c = quotient_divisor(num_entities, bucket_size)
  return ids % bucket_size, ids // c


def soft_threshold(w: jax.Array, s: jax.Array, gk: float = 1.0) -> jax.Array:
  """Soft thresholding ``sign(w) ⊙ relu(|w| − gk·sigmoid(s))`` (CERP and PEP).

  Entries with ``|w| ≤ gk·σ(s)`` become exactly 0 and then get zero gradient to both w and s;
  survivors are shrunk by the threshold. Plain autodiff, no straight-through estimator.

  Args:
    w: weights, any shape, float32.
    s: threshold logits, broadcastable to ``w``.
    gk: threshold multiplier (1 in the original's stage 1; ``1 + step/prune.gk_ramp_steps`` under
      the NCF-MLP ``:fast`` preset, :func:`cerp_jax.train.threshold_multiplier`).
  """
  return jnp.sign(w) * jax.nn.relu(jnp.abs(w) - gk * jax.nn.sigmoid(s))


SCHEDULE = "schedule"  # variable collection of per-step values the train step supplies


def threshold_multiplier(module: nn.Module) -> jax.Array:
  """The threshold multiplier ``gk`` of this forward: the ``'schedule'`` collection's ``gk`` when
  the train step supplies one (``prune.gk_ramp_steps > 0``), else 1 (the original)."""
  return module.get_variable(SCHEDULE, "gk", 1.0)


def _threshold_init(method: str, value: float) -> Callable:
  """Threshold initialiser: ``all_ones`` fills ``value``; random methods draw, min-max
  scale each row to [0, 1] and multiply by ``value`` (so the result lies in [value, 0])."""

  def init(key, shape, dtype=jnp.float32):
    if method == "all_ones":
      return jnp.full(shape, value, dtype)
    if method == "uniform":
      x = jax.random.uniform(key, shape, dtype)
    elif method == "normal":
      x = jax.random.normal(key, shape, dtype)
    elif method == "xavier_uniform":
      x = nn.initializers.xavier_uniform()(key, shape, dtype)
    elif method == "power_law":
      x = jax.random.uniform(key, shape, dtype) ** (1.0 / 0.5 - 1.0)  # a = 0.5
    else:
      raise ValueError(f"threshold_init_method={method!r}: expected all_ones, uniform, normal, "
                       "xavier_uniform or power_law")
    lo = x.min(axis=-1, keepdims=True)
    hi = x.max(axis=-1, keepdims=True)
    return (x - lo) / jnp.maximum(hi - lo, 1e-12) * value

  return init


class TableEmbedding(nn.Module):
  """Base of every embedding: a subclass defines ``tables()`` (the effective tables, a dict of
  arrays) and ``compose(tables, ids)``; lookup of ids and of all N entities follow from them, so
  evaluation from packed tables (``compose`` on unpacked tables) and training share one code path."""

  @property
  def out_dim(self) -> int:
    """Width of a composed vector (``features``; composers that concatenate override it)."""
    return self.features

  def __call__(self, ids: jax.Array) -> jax.Array:
    """``[n] int32`` entity ids → ``[n, out_dim]`` float32 vectors."""
    return self.compose(self.tables(), ids)

  def embed_all(self) -> jax.Array:
    """``[N, out_dim]`` vectors of all N entities."""
    return self(jnp.arange(self.num_entities, dtype=jnp.int32))


class CERPEmbedding(TableEmbedding):
  """CERP compositional embedding: two meta-embedding tables P, Q of shape ``[b, d]``.

  Entity ``id`` gets ``P̂[id mod b] + Q̂[id div ceil(N/b)]`` (``combine='sum'``, the paper's method)
  or their concatenation (``'concat'``, out_dim 2d). In ``'prune'`` mode ``P̂, Q̂`` are soft-thresholded
  with element-wise (or global) learnable thresholds ``S_P, S_Q``; in ``'retrain'`` mode ``P̂ = P ⊙ M_P``
  with fixed 0/1 masks from the ``'masks'`` collection and no thresholds; ``'dense'`` uses P, Q as is.

  Attributes:
    num_entities: N = num_users + num_items.
    bucket_size: b, rows of each table. Must satisfy ceil(N/b) ≤ b (checked at construction).
    features: d.
    mode: 'prune' | 'retrain' | 'dense'.
    threshold_type: 'element-wise' (``[b, d]`` thresholds) | 'global' (one scalar per table).
    threshold_init: initial threshold logit (−100 in the original).
    threshold_init_method: 'all_ones' | 'uniform' | 'normal' | 'xavier_uniform' | 'power_law'.
    combine: 'sum' | 'concat'.

  Raises:
    BucketSizeError: at construction, if the (q, r) pairs collide.
  """

  num_entities: int
  bucket_size: int
  features: int
  mode: str = PRUNE
  threshold_type: str = "element-wise"
  threshold_init: float = -100.0
  threshold_init_method: str = "all_ones"
  combine: str = "sum"

  prunable = ("P", "Q")

  def __post_init__(self):
    check_bucket_size(self.num_entities, self.bucket_size)
    if self.combine not in ("sum", "concat"):
      raise ValueError(f"combine={self.combine!r}: expected 'sum' or 'concat'")
    if self.threshold_type not in ("element-wise", "global"):
      raise ValueError(f"threshold_type={self.threshold_type!r}: expected 'element-wise' or 'global'")
    super().__post_init__()

  @property
  def out_dim(self) -> int:
    return self.features * (2 if self.combine == "concat" else 1)

  def num_parameters(self) -> int:
    """Entries of the meta tables, 2·b·d (the sparsity denominator; thresholds not counted)."""
    return 2 * self.bucket_size * self.features

  def setup(self):
    shape = (self.bucket_size, self.features)
    xavier = nn.initializers.xavier_uniform()
    self.P = self.param("P", xavier, shape)
    self.Q = self.param("Q", xavier, shape)
    if self.mode == PRUNE:
      s_shape = shape if self.threshold_type == "element-wise" else (1, 1)
      init = _threshold_init(self.threshold_init_method, self.threshold_init)
      self.S_P = self.param("S_P", init, s_shape)
      self.S_Q = self.param("S_Q", init, s_shape)
    elif self.mode == RETRAIN:
      self.M_P = self.variable("masks", "P", jnp.ones, shape, jnp.float32)
      self.M_Q = self.variable("masks", "Q", jnp.ones, shape, jnp.float32)

  def tables(self) -> dict[str, jax.Array]:
    """The effective meta tables ``{'P': [b, d], 'Q': [b, d]}`` float32 (pruned or masked)."""
    if self.mode == PRUNE:
      gk = threshold_multiplier(self)
      return {"P": soft_threshold(self.P, self.S_P, gk), "Q": soft_threshold(self.Q, self.S_Q, gk)}
    if self.mode == RETRAIN:
      return {"P": self.P * self.M_P.value, "Q": self.Q * self.M_Q.value}
    return {"P": self.P, "Q": self.Q}

  def compose(self, tables: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
    """``[n] int32`` ids → ``[n, out_dim]`` vectors from given effective tables."""
    r, q = cerp_indices(ids, self.num_entities, self.bucket_size)
    p_rows, q_rows = tables["P"][r], tables["Q"][q]
    if self.combine == "sum":
      return p_rows + q_rows
    return jnp.concatenate([p_rows, q_rows], axis=-1)


class FullEmbedding(TableEmbedding):
  """The uncompressed reference: one ``[N, d]`` table ``E`` (users then items), no pruning.

  Attributes:
    num_entities: N.
    features: d.
    initializer: 'normal' (N(0, init_std²), the LightGCN-PyTorch / MF-BPR convention) or 'xavier_uniform'.
    init_std: standard deviation for 'normal'.
  """

  num_entities: int
  features: int
  initializer: str = "normal"
  init_std: float = 0.1
  mode: str = DENSE

  prunable = ()

  def num_parameters(self) -> int:
    """N·d."""
    return self.num_entities * self.features

  def setup(self):
    if self.initializer == "normal":
      init = nn.initializers.normal(self.init_std)
    elif self.initializer == "xavier_uniform":
      init = nn.initializers.xavier_uniform()
    else:
      raise ValueError(f"initializer={self.initializer!r}: expected 'normal' or 'xavier_uniform'")
    self.E = self.param("E", init, (self.num_entities, self.features))

  def tables(self) -> dict[str, jax.Array]:
    return {"E": self.E}

  def compose(self, tables: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
    return tables["E"][ids]

  def embed_all(self) -> jax.Array:
    return self.E


def count_nonzeros(tables: dict[str, jax.Array]) -> jax.Array:
  """Total exact non-zeros over a dict of tables, ``int32`` scalar (computed on device)."""
  return sum(jnp.count_nonzero(t).astype(jnp.int32) for t in tables.values())


PRUNED_EMBEDDINGS = ("cerp", "pep")  # embeddings trained in two stages (prune, then retrain)
EMBEDDINGS = ("cerp", "full", "qr", "hash", "pep")


def prunes(embedding: str) -> bool:
  """Whether ``config.model.embedding`` names a pruned embedding (stage 1 + lottery-ticket retrain);
  the others are trained once, as the full table is (stage 2 only, ``target=None``)."""
  return embedding in PRUNED_EMBEDDINGS


def resolved_threshold_init(config) -> float:
  """The CERP threshold logit init a config asks for.

  ``model.threshold_init_scale > 0`` (the ``:fast`` preset) replaces ``model.threshold_init`` by
  ``logit(scale · a)`` with ``a = sqrt(6/(b + d))`` the Xavier bound of P and Q, so that the
  thresholds ``σ(s) = scale · a`` start where pruning begins. Otherwise ``model.threshold_init``
  (−100 in the original).

  Raises:
    ValueError: ``scale · a`` is not in (0, 1).
  """
  mc = config.model
  scale = mc.get("threshold_init_scale", 0.0)
  if not scale:
    return float(mc.threshold_init)
  if not 0 < scale * math.sqrt(6.0 / (mc.bucket_size + mc.dim)) < 1:
    raise ValueError(f"config.model.threshold_init_scale={scale!r}: scale · Xavier bound must be in "
                     "(0, 1)")
  p = scale * math.sqrt(6.0 / (mc.bucket_size + mc.dim))
  return float(math.log(p / (1 - p)))
