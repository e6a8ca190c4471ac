"""The LightGCN propagation graph: Â = D^-1/2 A D^-1/2 of the user–item bipartite graph.

A is built from the **training** interactions only (never validation or test), has no self-loops,
and is symmetric: user u ↔ item entity U + i for every training pair. Degrees count both
directions, so Â[u, U+i] = 1 / sqrt(deg(u)·deg(i)); isolated nodes get degree 0 and an all-zero row
(as in LightGCN-PyTorch, which sets their D^-1/2 to 0).

The device-side graph is stored in a **locality order** of its nodes (reverse Cuthill–McKee), so
that the rows one output row gathers sit near each other and near the previous row's: on Gowalla's
graph a LightGCN training step at d = 128 runs ≈ 8 % faster than in the id order (users, then
items), the two permutations included (docs/results/gowalla_lightgcn.md). :class:`cerp_jax.models.LightGCN` moves vectors into that order and
back, so callers see entity order only.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph


def normalized_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
  """``[N, N]`` float32 CSR Â = D^-1/2 A D^-1/2 with N = U + I (users first, then items).

  Args:
    train: ``[U, I]`` CSR of ones, the training positives.

  Returns:
    symmetric CSR with sorted indices, ``2·nnz(train)`` entries.
  """
  r = train.tocsr().astype(np.float32)
  r.data[:] = 1.0
  a = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
  deg = np.asarray(a.sum(axis=1)).ravel()
  with np.errstate(divide="ignore"):
    d_inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(deg), 0.0).astype(np.float32)
  d = sp.diags(d_inv_sqrt)
  out = (d @ a @ d).tocsr().astype(np.float32)
  out.sort_indices()
  return out


def locality_order(adj: sp.csr_matrix) -> np.ndarray:
  """``[N] int32`` node order for cache locality: reverse Cuthill–McKee of the symmetric ``adj``
  (scipy; deterministic for a given matrix; milliseconds on Gowalla)."""
  return csgraph.reverse_cuthill_mckee(adj.tocsr(), symmetric_mode=True).astype(np.int32)


def graph_arrays(adj: sp.csr_matrix, reorder: bool = True) -> dict:
  """The device-side form of ``adj`` (``[N, N]`` symmetric CSR with E entries), in node order ``perm``.

  Args:
    adj: from :func:`normalized_adjacency`.
    reorder: store the nodes in :func:`locality_order` (the default); False keeps the id order
      (``perm`` is the identity).

  Returns:
    CSR arrays of ``adj[perm][:, perm]``: ``data [E] float32``, ``indices [E] int32``,
    ``indptr [N+1] int32``; the COO row ids ``rows [E] int32`` (no propagation uses them, but
    LightGCN's ``'graph'`` variable collection declares them); ``perm [N] int32`` (position k holds
    node ``perm[k]``) and its inverse ``inv [N] int32`` (node n sits at position ``inv[n]``).

  Raises:
    ValueError: E ≥ 2³¹ (int32 indices would wrap).
  """
  if adj.nnz > np.iinfo(np.int32).max:
    raise ValueError(f"the normalised adjacency has {adj.nnz:,} non-zeros: more than int32 indices "
                     "address (2,147,483,647)")
  n = adj.shape[0]
  perm = locality_order(adj) if reorder else np.arange(n, dtype=np.int32)
  inv = np.empty(n, np.int32)
  inv[perm] = np.arange(n, dtype=np.int32)
  a = adj.tocsr()[perm][:, perm].tocsr()
  a.sort_indices()
  rows = np.repeat(np.arange(n, dtype=np.int32), np.diff(a.indptr))
  return {"data": a.data.astype(np.float32), "indices": a.indices.astype(np.int32),
          "indptr": a.indptr.astype(np.int32), "rows": rows, "perm": perm, "inv": inv}
