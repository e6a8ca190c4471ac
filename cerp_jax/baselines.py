"""Baseline embeddings behind the one embeddings interface: QR, the hashing trick, PEP.

Each is a ``flax.linen`` module with the face of :mod:`cerp_jax.embeddings` (``__call__(ids)``,
``embed_all()``, ``tables()``, ``compose(tables, ids)``, ``num_parameters()``, ``prunable``), so the
backbones, the trainer (:func:`cerp_jax.train.train_and_evaluate`), the evaluator, the packer and the
sweep treat them exactly like CERP and the full table. Entity ids are users ``0..U-1`` then items
``U..U+I-1`` (``N = U + I``).

* :class:`QREmbedding` — the quotient–remainder trick (Shi et al., *Compositional Embeddings Using
  Complementary Partitions for Memory-Efficient Recommendation Systems*, KDD 2020; DLRM's
  ``tricks/qr_embedding_bag.py``): quotient table ``[ceil(N/b), d]`` indexed by ``id div b``,
  remainder table ``[b, d]`` indexed by ``id mod b``, combined by ``mult`` (their default), ``add`` or
  ``concat``. No pruning.
* :class:`HashEmbedding` — the hashing trick: one ``[B, d]`` table, ``k`` seeded hash functions,
  an entity's vector is the sum of its ``k`` hashed rows. No pruning.
* :class:`PEPEmbedding` — PEP (Liu et al., *Learnable Embedding Sizes for Recommender Systems*,
  ICLR 2021): the full ``[N, d]`` table soft-thresholded with learnable thresholds (granularity
  element-wise, per dimension, per row or global; init −15 as in PEP's code). It prunes with the same
  machinery as CERP (:func:`cerp_jax.embeddings.soft_threshold` in ``'prune'`` mode, the per-step
  snapshots of :mod:`cerp_jax.pruning`, masks from the ``'masks'`` collection in ``'retrain'`` mode,
  lottery-ticket rewinding); its target sparsity is relative to ``N·d``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cerp_jax import embeddings as emb_lib
from cerp_jax.embeddings import DENSE, PRUNE, RETRAIN

QR_OPERATIONS = ("mult", "add", "concat")
PEP_THRESHOLD_TYPES = ("element-wise", "dimension", "row", "global")


def _normal(std: float):
  return nn.initializers.normal(std)


# --------------------------------------------------------------------------------------------------
# QR (quotient–remainder) compositional embedding
# --------------------------------------------------------------------------------------------------


def qr_num_quotients(num_entities: int, num_collisions: int) -> int:
  """Rows of the quotient table, ``ceil(N / b)`` (DLRM's ``num_embeddings[0]``)."""
  return -(-num_entities // num_collisions)


def qr_indices(ids, num_collisions: int):
  """Quotient and remainder indices of entity ids (Shi et al. 2020, §3; DLRM's QREmbeddingBag).

  Args:
    ids: ``[...]`` int32 entity ids in ``[0, N)`` (numpy or jax).
    num_collisions: b, rows of the remainder table.

  Returns:
    ``(q, r)``: ``q = id div b`` indexes the quotient table, ``r = id mod b`` the remainder table.
    The pair ``(q, r)`` is unique for every id for any ``b ≥ 1`` (complementary partitions: ``id =
    q·b + r``), so no two entities share both rows — unlike CERP's ``(id div ceil(N/b), id mod b)``,
    which needs ``ceil(N/b) ≤ b``.
  """
  return ids // num_collisions, ids % num_collisions


class QREmbedding(emb_lib.TableEmbedding):
  """The quotient–remainder trick (Shi et al., KDD 2020; DLRM ``QREmbeddingBag``).

  Tables: ``Q`` (quotient) ``[ceil(N/b), d]`` and ``R`` (remainder) ``[b, d]``, float32. Entity ``id``
  gets ``Q[id div b] ∘ R[id mod b]`` with ``∘`` the element-wise product (``'mult'``, DLRM's default),
  the sum (``'add'``) or the concatenation (``'concat'``, out_dim ``2d``, each table ``d`` wide as DLRM
  does with an integer ``embedding_dim``). Not pruned: ``tables()`` are the raw parameters.

  Initialisation: N(0, σ²) per table, with σ chosen so that the composed vector starts at the full
  table's scale ``init_std`` (``'mult'``: σ = √init_std, since std(q·r) = σ²; ``'add'``:
  init_std/√2; ``'concat'``: init_std). DLRM draws ``U(√(1/N), 1)`` (torch ``uniform_(w, a)``); we keep
  the project's full-table convention so every method starts from the same composed scale.

  Attributes:
    num_entities: N.
    num_collisions: b ≥ 1, rows of the remainder table (DLRM's ``num_collisions``; at most b entities
      share a quotient row and ``ceil(N/b)`` share a remainder row).
    features: d.
    operation: 'mult' | 'add' | 'concat'.
    init_std: target standard deviation of the composed vectors at init.
    mode: ignored (no pruning); kept for the common constructor signature.

  Raises:
    ValueError: at construction, for b outside ``[1, N]`` or an unknown operation.
  """

  num_entities: int
  num_collisions: int
  features: int
  operation: str = "mult"
  init_std: float = 0.1
  mode: str = DENSE

  prunable = ()

  def __post_init__(self):
    if not 1 <= self.num_collisions <= max(self.num_entities, 1):
      raise ValueError(f"QR num_collisions b={self.num_collisions} must lie in [1, N={self.num_entities}]")
    if self.operation not in QR_OPERATIONS:
      raise ValueError(f"QR operation={self.operation!r}: expected one of {QR_OPERATIONS}")
    super().__post_init__()

  @property
  def num_quotients(self) -> int:
    return qr_num_quotients(self.num_entities, self.num_collisions)

  @property
  def out_dim(self) -> int:
    return self.features * (2 if self.operation == "concat" else 1)

  def num_parameters(self) -> int:
    """Entries of both tables, ``(ceil(N/b) + b)·d``."""
    return (self.num_quotients + self.num_collisions) * self.features

  def setup(self):
    std = {"mult": float(np.sqrt(self.init_std)), "add": self.init_std / float(np.sqrt(2.0)),
           "concat": self.init_std}[self.operation]
    self.Q = self.param("Q", _normal(std), (self.num_quotients, self.features))
    self.R = self.param("R", _normal(std), (self.num_collisions, self.features))

  def tables(self) -> dict[str, jax.Array]:
    """``{'Q': [ceil(N/b), d], 'R': [b, d]}`` float32, the tables that get packed."""
    return {"Q": self.Q, "R": self.R}

  def compose(self, tables: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
    """``[n] int32`` ids → ``[n, out_dim]`` float32 from the given tables."""
    q, r = qr_indices(ids, self.num_collisions)
    eq, er = tables["Q"][q], tables["R"][r]
    if self.operation == "mult":
      return eq * er
    if self.operation == "add":
      return eq + er
    return jnp.concatenate([eq, er], axis=-1)


# --------------------------------------------------------------------------------------------------
# Hashing trick
# --------------------------------------------------------------------------------------------------


def hash_salts(num_hashes: int, seed: int) -> np.ndarray:
  """``[k] uint32`` salts of the k hash functions, from ``numpy.random.SeedSequence(seed)``."""
  return np.random.SeedSequence(seed).generate_state(num_hashes, dtype=np.uint32)


def _fmix32(h, xp):
  """MurmurHash3's 32-bit finaliser (a bijection of uint32 with full avalanche); wraps mod 2³²."""
  h = h ^ (h >> xp.uint32(16))
  h = h * xp.uint32(0x85EBCA6B)
  h = h ^ (h >> xp.uint32(13))
  h = h * xp.uint32(0xC2B2AE35)
  return h ^ (h >> xp.uint32(16))


def hash_indices(ids, num_buckets: int, num_hashes: int, seed: int, xp=jnp):
  """Rows of the shared table that the hashing trick gives each entity.

  ``h_j(id) = fmix32(uint32(id) XOR salt_j) mod B`` for ``j < k`` (salts from :func:`hash_salts`). The
  same function in numpy (``xp=np``) and jax (``xp=jnp``) gives identical rows (uint32 arithmetic
  wraps mod 2³² in both).

  Args:
    ids: ``[...]`` integer entity ids, ``0 ≤ id < 2³²``.
    num_buckets: B, rows of the table.
    num_hashes: k ≥ 1.
    seed: selects the hash functions.
    xp: ``jax.numpy`` or ``numpy``.

  Returns:
    ``[..., k]`` int32 row indices in ``[0, B)``.
  """
  salts = xp.asarray(hash_salts(num_hashes, seed))
  keys = xp.asarray(ids).astype(xp.uint32)[..., None] ^ salts
  with np.errstate(over="ignore"):
    h = _fmix32(keys, xp)
  return (h % xp.uint32(num_buckets)).astype(xp.int32)


def hash_collisions(num_entities: int, num_buckets: int, num_hashes: int, seed: int) -> int:
  """Entities that share *all* their hashed rows (the ordered k-tuple) with another entity.

  Such entities get identical vectors whatever the training does. For k = 1 and a uniform hash its
  expectation is ``N·(1 − (1 − 1/B)^(N−1))`` (each entity collides unless the other N − 1 all miss
  its row); for k ≥ 2 it is about ``N·(1 − (1 − 1/B^k)^(N−1))`` (k independent rows), near 0 once
  ``B^k ≫ N``. Entities sharing *some* row are far more common (they share that row's parameters).

  Returns:
    the count (int), computed exactly from :func:`hash_indices`.
  """
  idx = hash_indices(np.arange(num_entities), num_buckets, num_hashes, seed, xp=np)
  _, inverse, counts = np.unique(idx, axis=0, return_inverse=True, return_counts=True)
  return int(np.sum(counts[inverse.ravel()] > 1))


def expected_hash_collisions(num_entities: int, num_buckets: int, num_hashes: int) -> float:
  """The expectation quoted in :func:`hash_collisions` for a uniform random hash."""
  p_other = 1.0 / float(num_buckets) ** num_hashes
  return num_entities * (1.0 - (1.0 - p_other) ** (num_entities - 1))


class HashEmbedding(emb_lib.TableEmbedding):
  """The hashing trick: one shared ``[B, d]`` table ``T``; entity ``id`` gets ``Σ_j T[h_j(id)]``.

  ``h_j`` are k seeded hash functions (:func:`hash_indices`), computed on the fly (nothing but the
  table and the seed is stored, so only ``T`` is packed). Rows are initialised N(0, (init_std/√k)²)
  so the sum of k rows starts at the full table's scale. Not pruned.

  Attributes:
    num_entities: N.
    num_buckets: B ≥ 1.
    features: d.
    num_hashes: k ≥ 1.
    seed: hash seed (independent of the run seed).
    init_std: target standard deviation of the composed vectors at init.
    mode: ignored (no pruning).

  Raises:
    ValueError: at construction, for B < 1 or k < 1.
  """

  num_entities: int
  num_buckets: int
  features: int
  num_hashes: int = 2
  seed: int = 0
  init_std: float = 0.1
  mode: str = DENSE

  prunable = ()

  def __post_init__(self):
    if self.num_buckets < 1 or self.num_hashes < 1:
      raise ValueError(f"hashing needs rows B ≥ 1 and k ≥ 1 hash functions, got B={self.num_buckets}"
                       f", k={self.num_hashes}")
    super().__post_init__()

  def num_parameters(self) -> int:
    """``B·d``."""
    return self.num_buckets * self.features

  def setup(self):
    std = self.init_std / float(np.sqrt(self.num_hashes))
    self.T = self.param("T", _normal(std), (self.num_buckets, self.features))

  def tables(self) -> dict[str, jax.Array]:
    """``{'T': [B, d]}`` float32."""
    return {"T": self.T}

  def compose(self, tables: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
    """``[n] int32`` ids → ``[n, d]`` float32 sums of the hashed rows."""
    idx = hash_indices(ids, self.num_buckets, self.num_hashes, self.seed)
    return jnp.sum(tables["T"][idx], axis=-2)


# --------------------------------------------------------------------------------------------------
# PEP
# --------------------------------------------------------------------------------------------------


def pep_threshold_shape(threshold_type: str, num_entities: int, features: int) -> tuple[int, int]:
  """Shape of PEP's threshold logits ``S_E`` for a granularity (PEP's ``threshold_type``).

  'element-wise' ``[N, d]`` (PEP's ``feature_dim``), 'dimension' ``[1, d]`` (``dimension``), 'row'
  ``[N, 1]`` (``feature``), 'global' ``[1, 1]`` (``global``); broadcast against ``E [N, d]``.

  Raises:
    ValueError: unknown granularity.
  """
  shapes = {"element-wise": (num_entities, features), "dimension": (1, features),
            "row": (num_entities, 1), "global": (1, 1)}
  if threshold_type not in shapes:
    raise ValueError(f"PEP threshold_type={threshold_type!r}: expected one of {PEP_THRESHOLD_TYPES}")
  return shapes[threshold_type]


class PEPEmbedding(emb_lib.TableEmbedding):
  """PEP (Liu et al., ICLR 2021): the full ``[N, d]`` table pruned by learnable soft thresholds.

  ``'prune'`` mode: ``Ê = sign(E) ⊙ relu(|E| − sigmoid(S_E))`` (:func:`cerp_jax.embeddings.soft_threshold`),
  ``S_E`` shaped by the granularity (:func:`pep_threshold_shape`), every entry initialised to
  ``threshold_init`` (−15 in PEP's code). ``'retrain'``: ``Ê = E ⊙ M_E`` with the fixed 0/1 mask from the
  ``'masks'`` collection (PEP's lottery-ticket retraining from the step-0 values, done by
  :mod:`cerp_jax.pruning` and :func:`cerp_jax.train.retrain_stage`). ``'dense'``: ``E`` as is.
  The sparsity is relative to ``num_parameters() = N·d``. PEP has no −Σ tanh² regularizer: run stage 1
  with ``config.prune.gamma_init = 0`` (the sweep does).

  Attributes:
    num_entities: N.
    features: d.
    mode: 'prune' | 'retrain' | 'dense'.
    threshold_type: 'element-wise' | 'dimension' | 'row' | 'global'.
    threshold_init: initial threshold logit.
    initializer: 'normal' (N(0, init_std²), the full table's) | 'xavier_uniform' (PEP's code).
    init_std: for 'normal'.

  Raises:
    ValueError: at construction, unknown granularity or initializer.
  """

  num_entities: int
  features: int
  mode: str = PRUNE
  threshold_type: str = "element-wise"
  threshold_init: float = -15.0
  initializer: str = "normal"
  init_std: float = 0.1

  prunable = ("E",)

  def __post_init__(self):
    pep_threshold_shape(self.threshold_type, 1, 1)
    if self.initializer not in ("normal", "xavier_uniform"):
      raise ValueError(f"initializer={self.initializer!r}: expected 'normal' or 'xavier_uniform'")
    super().__post_init__()

  def num_parameters(self) -> int:
    """``N·d`` (the sparsity denominator; thresholds not counted)."""
    return self.num_entities * self.features

  def setup(self):
    shape = (self.num_entities, self.features)
    init = (_normal(self.init_std) if self.initializer == "normal"
            else nn.initializers.xavier_uniform())
    self.E = self.param("E", init, shape)
    if self.mode == PRUNE:
      s_shape = pep_threshold_shape(self.threshold_type, *shape)
      self.S_E = self.param("S_E", nn.initializers.constant(self.threshold_init), s_shape)
    elif self.mode == RETRAIN:
      self.M_E = self.variable("masks", "E", jnp.ones, shape, jnp.float32)

  def tables(self) -> dict[str, jax.Array]:
    """``{'E': [N, d]}`` float32, pruned (prune), masked (retrain) or raw (dense)."""
    if self.mode == PRUNE:
      return {"E": emb_lib.soft_threshold(self.E, self.S_E, emb_lib.threshold_multiplier(self))}
    if self.mode == RETRAIN:
      return {"E": self.E * self.M_E.value}
    return {"E": self.E}

  def compose(self, tables: dict[str, jax.Array], ids: jax.Array) -> jax.Array:
    return tables["E"][ids]

  def embed_all(self) -> jax.Array:
    return self.tables()["E"]


def make_baseline(config, num_entities: int, mode: str) -> nn.Module:
  """The QR / hashing / PEP module of ``config.model`` (called by
  :func:`cerp_jax.models.make_embedding`).

  Raises:
    ValueError: ``config.model.embedding`` is not a baseline, or a field value is invalid.
  """
  mc = config.model
  if mc.embedding == "qr":
    return QREmbedding(num_entities=num_entities, num_collisions=mc.bucket_size, features=mc.dim,
                       operation=mc.qr_operation, init_std=mc.full_init_std, mode=mode)
  if mc.embedding == "hash":
    return HashEmbedding(num_entities=num_entities, num_buckets=mc.hash_rows, features=mc.dim,
                         num_hashes=mc.hash_num_hashes, seed=mc.hash_seed,
                         init_std=mc.full_init_std, mode=mode)
  if mc.embedding == "pep":
    return PEPEmbedding(num_entities=num_entities, features=mc.dim, mode=mode,
                        threshold_type=mc.pep_threshold_type,
                        threshold_init=mc.pep_threshold_init, initializer=mc.full_init,
                        init_std=mc.full_init_std)
  raise ValueError(f"config.model.embedding={mc.embedding!r} is not a baseline")
