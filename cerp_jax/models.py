"""Backbones (MF, NCF-style MLP, LightGCN), the recommender that joins an embedding to a backbone,
and its assembly from a config.

A backbone never reads embedding parameters: it takes composed user and item vectors and returns
scores. Two entry points per backbone:

* ``__call__(user_vecs [..., d], item_vecs [..., d], train, mask) -> [...]`` scores of paired rows;
* ``score_matrix(user_vecs [B, d], item_vecs [I, d]) -> [B, I]`` for full ranking (eval mode).

Assembly (used by training, evaluation, eval.py and the benchmarks alike): :func:`create_model`
(with :func:`make_embedding` and :func:`make_backbone`), :func:`init_variables`,
:func:`model_consts` (LightGCN's graph), :func:`model_variables`, and the evaluator's
:func:`make_score_fn` and :func:`make_vectors_fn`.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cerp_jax import baselines
from cerp_jax import embeddings as emb_lib
from cerp_jax import graph as graph_lib
from cerp_jax import spmm as spmm_lib


class MF(nn.Module):
  """Matrix factorisation: score = ⟨e_u, e_i⟩ (the paper's code has no MF backbone)."""

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
  """The paper's NCF-style MLP backbone (the authors' code: torchfm ``MultiLayerPerceptron``).

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


@jax.custom_vjp
def symmetric_spmm(graph: dict, h: jax.Array) -> jax.Array:
  """``Â @ h`` for a symmetric sparse ``Â`` given as CSR arrays (``jax.experimental.sparse.BCSR``).

  Because Â = Âᵀ, the backward pass is the same product (``Â @ ct``), which on CPU is far faster than
  autodiff's transposed (scatter) product. The graph gets no gradient. The product is
  :func:`cerp_jax.spmm.csr_matmul` (a native kernel on the CPU, BCSR elsewhere).

  Args:
    graph: ``data [E] float32``, ``indices [E] int32``, ``indptr [N+1] int32`` (and ``rows``, unused).
    h: ``[N, d]`` float32.
  """
  return spmm_lib.csr_matmul(graph, h)


def _spmm_fwd(graph, h):
  return spmm_lib.csr_matmul(graph, h), graph


def _spmm_bwd(graph, ct):
  return jax.tree_util.tree_map(jnp.zeros_like, graph), spmm_lib.csr_matmul(graph, ct)


symmetric_spmm.defvjp(_spmm_fwd, _spmm_bwd)


@jax.custom_vjp
def permute_rows(h: jax.Array, perm: jax.Array, inv: jax.Array) -> jax.Array:
  """``h[perm]`` for a permutation ``perm [N] int32`` with inverse ``inv`` (:func:`cerp_jax.spmm.permute_rows`:
  equal values, no rounding); its VJP is the same kind of permutation, ``ct[inv]`` (autodiff's would be a scatter-add). ``perm``
  and ``inv`` get no gradient."""
  return spmm_lib.permute_rows(h, perm)


def _permute_fwd(h, perm, inv):
  return spmm_lib.permute_rows(h, perm), (perm, inv)


def _permute_bwd(res, ct):
  perm, inv = res
  return spmm_lib.permute_rows(ct, inv), jnp.zeros_like(perm), jnp.zeros_like(inv)


permute_rows.defvjp(_permute_fwd, _permute_bwd)


class LightGCN(nn.Module):
  """LightGCN (He et al., SIGIR 2020): ``mean(E⁰, ÂE⁰, …, Â^L E⁰)``, score = dot product.

  The normalised adjacency Â (:mod:`cerp_jax.graph`, training interactions only) is not a parameter: it
  lives in the ``'graph'`` variable collection (arrays ``data``, ``indices``, ``indptr``, ``rows`` of
  Â in the graph's locality order, and that order's ``perm``, ``inv``), so the jitted step takes it
  as an argument. At ``init`` the collection holds zeros of the right shapes;
  the caller puts the real graph in (:func:`model_consts`).

  Attributes:
    num_nodes: N = U + I.
    num_edges: non-zeros of Â (2 · training pairs).
    num_layers: L (3).
  """

  num_nodes: int
  num_edges: int
  num_layers: int = 3

  needs_all_entities = True

  def setup(self):
    e, n = self.num_edges, self.num_nodes
    self.graph = {
        "data": self.variable("graph", "data", jnp.zeros, (e,), jnp.float32),
        "indices": self.variable("graph", "indices", jnp.zeros, (e,), jnp.int32),
        "indptr": self.variable("graph", "indptr", jnp.zeros, (n + 1,), jnp.int32),
        "rows": self.variable("graph", "rows", jnp.zeros, (e,), jnp.int32),
        "perm": self.variable("graph", "perm", jnp.zeros, (n,), jnp.int32),
        "inv": self.variable("graph", "inv", jnp.zeros, (n,), jnp.int32)}

  def propagate(self, vecs: jax.Array) -> jax.Array:
    """``[N, d]`` layer-0 vectors → ``[N, d]`` mean over layers 0..L, both in entity order (the
    products run in the graph's node order, :func:`cerp_jax.graph.graph_arrays`)."""
    graph = {k: v.value for k, v in self.graph.items()}
    csr = {k: graph[k] for k in ("data", "indices", "indptr")}
    h = permute_rows(vecs, graph["perm"], graph["inv"])
    out = h
    for _ in range(self.num_layers):
      h = symmetric_spmm(csr, h)
      out = out + h
    return permute_rows(out, graph["inv"], graph["perm"]) / (self.num_layers + 1)

  def __call__(self, user_vecs, item_vecs, train: bool = False, mask=None):
    del train, mask
    return jnp.sum(user_vecs * item_vecs, axis=-1)

  def score_matrix(self, user_vecs, item_vecs):
    return user_vecs @ item_vecs.T


def make_backbone(config, num_nodes: int = 0, num_edges: int = 0) -> nn.Module:
  mc = config.model
  if mc.backbone == "mf":
    return MF()
  if mc.backbone == "mlp":
    return NCFMLP(num_layers=mc.mlp_num_layers, dropout=mc.mlp_dropout,
                  eval_item_chunk=mc.mlp_eval_item_chunk)
  if mc.backbone == "lightgcn":
    return LightGCN(num_nodes=num_nodes, num_edges=num_edges, num_layers=mc.gcn_num_layers)
  raise ValueError(f"config.model.backbone={mc.backbone!r}: expected 'mf', 'mlp' or 'lightgcn'")


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
      (the composed, pruned layer-0 embeddings the regularizer and L2 use), and the effective tables of this
      forward (``embedding.tables()``, counted for the pruning schedule).
    """
    g, m = items.shape
    ids = jnp.concatenate([users, (items + self.num_users).reshape(-1)])
    tables = self.embedding.tables()
    mask = None if group_mask is None else jnp.broadcast_to(group_mask[:, None], (g, m))
    if getattr(self.backbone, "needs_all_entities", False):
      # LightGCN: all N composed vectors feed layer 0 at every step.
      all0 = self.embedding.compose(tables, jnp.arange(self.embedding.num_entities))
      out = self.backbone.propagate(all0)
      vecs, prop = all0[ids], out[ids]
      scores = self.backbone(prop[:g, None, :], prop[g:].reshape(g, m, -1), train=train, mask=mask)
    else:
      vecs = self.embedding.compose(tables, ids)
      scores = self.backbone(vecs[:g, None, :], vecs[g:].reshape(g, m, -1), train=train, mask=mask)
    user_vecs, item_vecs = vecs[:g], vecs[g:].reshape(g, m, -1)
    return scores, user_vecs, item_vecs, tables

  def tables(self):
    return self.embedding.tables()

  def entity_vectors(self):
    """``[N, out_dim]`` vectors of all entities as the backbone scores them (LightGCN: propagated,
    once per call from the parameters given)."""
    vecs = self.embedding.embed_all()
    if getattr(self.backbone, "needs_all_entities", False):
      vecs = self.backbone.propagate(vecs)
    return vecs

  def score_users(self, user_vecs, item_vecs):
    """``[B, out] × [I, out] → [B, I]`` full-ranking scores (eval mode)."""
    return self.backbone.score_matrix(user_vecs, item_vecs)


# --------------------------------------------------------------------------------------------------
# Assembly from a config
# --------------------------------------------------------------------------------------------------


def make_embedding(config, num_entities: int, mode: str) -> nn.Module:
  """The embedding module ``config.model.embedding`` names (one of ``embeddings.EMBEDDINGS``).

  Args:
    config: a train.py config (``config.model``'s fields size the module).
    num_entities: N = users + items.
    mode: ``embeddings.PRUNE`` | ``RETRAIN`` | ``DENSE``.

  Raises:
    ValueError: an unknown embedding name or an invalid field value.
    BucketSizeError: CERP's bucket size leaves two entities with the same (quotient, remainder).
  """
  mc = config.model
  if mc.embedding in ("qr", "hash", "pep"):
    return baselines.make_baseline(config, num_entities, mode)
  if mc.embedding == "cerp":
    return emb_lib.CERPEmbedding(num_entities=num_entities, bucket_size=mc.bucket_size,
                                 features=mc.dim, mode=mode, threshold_type=mc.threshold_type,
                                 threshold_init=emb_lib.resolved_threshold_init(config),
                                 threshold_init_method=mc.threshold_init_method, combine=mc.combine)
  if mc.embedding == "full":
    return emb_lib.FullEmbedding(num_entities=num_entities, features=mc.dim,
                                 initializer=mc.full_init, init_std=mc.full_init_std)
  raise ValueError(f"config.model.embedding={mc.embedding!r}: expected one of "
                   f"{emb_lib.EMBEDDINGS}")


def create_model(config, data, mode: str) -> Recommender:
  """The :class:`Recommender` of ``config.model`` over ``data``'s users and items.

  Args:
    config: a train.py config.
    data: the :class:`cerp_jax.data.Interactions` (entity count; LightGCN's edge count from the
      training split).
    mode: the embedding's mode, ``embeddings.PRUNE`` | ``RETRAIN`` | ``DENSE``.
  """
  embedding = make_embedding(config, data.num_entities, mode)
  backbone = make_backbone(config, num_nodes=data.num_entities, num_edges=2 * data.train.nnz)
  return Recommender(embedding=embedding, backbone=backbone, num_users=data.num_users)


_GRAPH_CACHE: dict = {}


def model_consts(config, data) -> dict:
  """Non-trainable, non-checkpointed variable collections: LightGCN's ``'graph'`` (Â from the
  training split only) as device arrays; ``{}`` for other backbones."""
  if config.model.backbone != "lightgcn":
    return {}
  key = (id(data.train), data.train.nnz)
  if key not in _GRAPH_CACHE:
    _GRAPH_CACHE.clear()
    adj = graph_lib.normalized_adjacency(data.train)
    _GRAPH_CACHE[key] = {k: jnp.asarray(v) for k, v in graph_lib.graph_arrays(adj).items()}
  return {"graph": {"backbone": _GRAPH_CACHE[key]}}


def init_variables(model: Recommender, seed: int, items_per_group: int) -> dict:
  """Initial variables from ``jax.random.key(seed)``: the same seed gives the same backbone weights
  (and step-0 tables) in both stages.

  ``items_per_group`` (1 + negatives) sizes the dummy batch. The placeholder ``'graph'``
  collection LightGCN creates at init is dropped (:func:`model_consts` supplies the real one).
  """
  users = jnp.zeros((2,), jnp.int32)
  items = jnp.zeros((2, items_per_group), jnp.int32)
  variables = flax.core.unfreeze(model.init(jax.random.key(seed), users, items, train=False))
  variables.pop("graph", None)
  return variables


def model_variables(params, batch_stats, masks, consts=None) -> dict:
  """The variables dict ``model.apply`` takes; empty collections are left out."""
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  if masks:
    v["masks"] = masks
  if consts:
    v.update(consts)
  return v


def make_score_fn(model: Recommender, num_users: int) -> Callable:
  """Pure scorer ``((variables, entity_vectors [N, out_dim]), users [B] int32) -> [B, I]`` float32
  scores of every item, for :class:`cerp_jax.evaluation.Evaluator`."""

  def score_fn(args, users):
    variables, vecs = args
    return model.apply(variables, vecs[users], vecs[num_users:],
                       method=Recommender.score_users)

  return score_fn


def make_vectors_fn(model: Recommender) -> Callable:
  """Jitted ``variables -> [N, out_dim]`` float32 composed entity vectors (once per evaluation)."""
  return jax.jit(lambda v: model.apply(v, method=Recommender.entity_vectors))
