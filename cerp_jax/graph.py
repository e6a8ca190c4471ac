"""The LightGCN propagation graph: Â = D^-1/2 A D^-1/2 of the user–item bipartite graph.

A is built from the **training** interactions only (never validation or test), has no self-loops,
and is symmetric: user u ↔ item entity U + i for every training pair. Degrees count both
directions, so Â[u, U+i] = 1 / sqrt(deg(u)·deg(i)); isolated nodes get degree 0 and an all-zero row
(as in LightGCN-PyTorch, which sets their D^-1/2 to 0).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


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


def graph_arrays(adj: sp.csr_matrix) -> dict:
  """The device-side form of ``adj`` (``[N, N]`` CSR with E entries).

  Returns:
    CSR arrays ``data [E] float32``, ``indices [E] int32``, ``indptr [N+1] int32``, plus the COO
    row ids ``rows [E] int32``: no propagation uses them, but LightGCN's ``'graph'`` variable
    collection (:class:`cerp_jax.models.LightGCN`) declares them.

  Raises:
    ValueError: E ≥ 2³¹ (int32 indices would wrap).
  """
  if adj.nnz > np.iinfo(np.int32).max:
    raise ValueError(f"the normalised adjacency has {adj.nnz:,} non-zeros: more than int32 indices "
                     "address (2,147,483,647)")
  rows = np.repeat(np.arange(adj.shape[0], dtype=np.int32), np.diff(adj.indptr))
  return {"data": adj.data.astype(np.float32), "indices": adj.indices.astype(np.int32),
          "indptr": adj.indptr.astype(np.int32), "rows": rows}
