"""Writes a cerp_jax split in the layout and derived files the authors' CERP code reads.

The original reads two folders (it never splits data itself):

* ``CERP/data/<name>/`` (stage 1, and the NCF-MLP retraining):
  ``interact_mat.npz`` — ``[U, I]`` CSR of ones, train + test positives (test ground truth is this
  row minus the train items); ``train_all_pos.pickle`` — a list over users of int64 arrays of train
  items; ``train_samples.pickle`` — the fixed ``{(user, positive): [5 negatives]}`` dict whose
  insertion order is the (unshuffled) training order; ``s_pre_adj_mat.npz`` — the normalized
  bipartite adjacency ``D^-1/2 A D^-1/2`` ``[U+I, U+I]`` (LightGCN backbone only);
  ``test_pos_item.pickle`` — ``{user: [test items]}``.
* ``CERP-LightGCN/data/<name>/`` (LightGCN retraining): ``train.txt``/``test.txt`` in LightGCN's
  text format (``user item item …``, 0-based, one line per user with at least one item) and
  ``s_pre_adj_mat.npz``.

The training samples are cerp_jax's own parity epoch (``BPRSampler`` in ``'fixed'``/``'parity'``
mode, seed of the run), so both codes see the same (user, positive, negatives) groups in the same
order: the "same negatives" swap of the parity study is built in for stage 1 and MLP retraining.
"""

from __future__ import annotations

import os
import pathlib
import pickle

import numpy as np
import scipy.sparse as sp


def write_lightgcn_text(path: os.PathLike | str, m: sp.csr_matrix) -> int:
  """Writes ``m``'s rows as ``user item item …`` lines (rows without items are left out).

  Args:
    path: output file.
    m: ``[U, I]`` CSR of positives.

  Returns:
    the number of (user, item) pairs written.
  """
  m = m.tocsr()
  m.sort_indices()
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for u in range(m.shape[0]):
      items = m.indices[m.indptr[u]:m.indptr[u + 1]]
      if len(items):
        f.write(" ".join([str(u), *map(str, items.tolist())]) + "\n")
        n += len(items)
  return n


def normalized_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
  """LightGCN's ``s_pre_adj_mat``: ``D^-1/2 [[0, R], [Rᵀ, 0]] D^-1/2``, float32 CSR ``[U+I, U+I]``.

  Rows of isolated nodes are zero (their degree's inverse root is set to 0, as LightGCN-PyTorch's
  ``getSparseGraph``).
  """
  r = sp.csr_matrix(train, dtype=np.float32)
  r.data[:] = 1.0
  adj = sp.bmat([[None, r], [r.T, None]], format="csr", dtype=np.float32)
  deg = np.asarray(adj.sum(axis=1)).ravel()
  with np.errstate(divide="ignore"):
    inv = np.power(deg, -0.5)
  inv[~np.isfinite(inv)] = 0.0
  d = sp.diags(inv.astype(np.float32))
  return (d @ adj @ d).tocsr().astype(np.float32)


def samples_dict(users: np.ndarray, items: np.ndarray) -> dict:
  """``{(user, positive): [negatives]}`` in the given order (the original's ``train_samples``).

  Args:
    users: ``[n]`` ints; items: ``[n, 1 + K]`` ints, column 0 the positive.

  Raises:
    ValueError: a repeated (user, positive) key (the original's dict would drop all but one).
  """
  out = {}
  for u, row in zip(users.tolist(), items.tolist()):
    key = (int(u), int(row[0]))
    if key in out:
      raise ValueError(f"repeated (user, positive) key {key}: samples must be de-duplicated")
    out[key] = [int(x) for x in row[1:]]
  return out


def export_split(train: sp.csr_matrix, test: sp.csr_matrix, users: np.ndarray, items: np.ndarray,
                 cerp_dir: os.PathLike | str, lightgcn_dir: os.PathLike | str) -> dict:
  """Writes one split for both parts of the original code.

  Args:
    train, test: ``[U, I]`` CSR positives (disjoint).
    users, items: the fixed stage-1 groups (``[n]``, ``[n, 6]``), in training order.
    cerp_dir: ``CERP/data/<name>`` of the scratch copy (created).
    lightgcn_dir: ``CERP-LightGCN/data/<name>`` of the scratch copy (created).

  Returns:
    counts written: ``{"num_users", "num_items", "train", "test", "groups"}``.

  Raises:
    ValueError: overlapping splits or repeated sample keys.
  """
  train, test = train.tocsr(), test.tocsr()
  if train.multiply(test).nnz:
    raise ValueError("train and test overlap")
  cerp_dir, lightgcn_dir = pathlib.Path(cerp_dir), pathlib.Path(lightgcn_dir)
  cerp_dir.mkdir(parents=True, exist_ok=True)
  lightgcn_dir.mkdir(parents=True, exist_ok=True)
  nu, ni = train.shape
  ones = lambda m: sp.csr_matrix((np.ones(m.nnz), m.nonzero()), shape=(nu, ni))
  full = (ones(train) + ones(test)).tocsr()
  sp.save_npz(cerp_dir / "interact_mat.npz", full)
  train_all_pos = [np.sort(train.indices[train.indptr[u]:train.indptr[u + 1]]).astype(np.int64)
                   for u in range(nu)]
  test_pos = {u: np.sort(test.indices[test.indptr[u]:test.indptr[u + 1]]).tolist()
              for u in range(nu) if test.indptr[u + 1] > test.indptr[u]}
  samples = samples_dict(users, items)
  for name, obj in (("train_all_pos", train_all_pos), ("test_pos_item", test_pos),
                    ("train_samples", samples)):
    with open(cerp_dir / f"{name}.pickle", "wb") as f:
      pickle.dump(obj, f)
  adj = normalized_adjacency(train)
  sp.save_npz(cerp_dir / "s_pre_adj_mat.npz", adj)
  sp.save_npz(lightgcn_dir / "s_pre_adj_mat.npz", adj)
  n_train = write_lightgcn_text(lightgcn_dir / "train.txt", train)
  n_test = write_lightgcn_text(lightgcn_dir / "test.txt", test)
  return {"num_users": nu, "num_items": ni, "train": n_train, "test": n_test,
          "groups": len(samples)}


def read_samples(path: os.PathLike | str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a ``train_samples.pickle`` back into ``users [n]``, ``items [n, 1 + K]`` int64."""
  with open(path, "rb") as f:
    d = pickle.load(f)
  users = np.array([k[0] for k in d], np.int64)
  items = np.array([[k[1], *v] for k, v in d.items()], np.int64).reshape(len(d), -1)
  return users, items
