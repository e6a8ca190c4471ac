"""Magnitude pruning of a trained table: the simple baseline for element-pruned embeddings.

Global magnitude pruning keeps the ``nnz`` entries of largest ``|value|`` over the whole ``[N, d]``
table. With ``min_per_row = m`` every row first keeps its own ``m`` largest entries (so no entity is
left without a vector), and the rest of the budget goes to the largest remaining entries globally.
"""

from __future__ import annotations

import numpy as np


def magnitude_mask(table: np.ndarray, nnz: int, min_per_row: int = 0) -> np.ndarray:
  """Which entries of a trained table survive magnitude pruning.

  Args:
    table: ``[N, d]`` float array (a trained embedding table).
    nnz: entries to keep, ``N · min_per_row ≤ nnz ≤ N · d``.
    min_per_row: m, the entries each row keeps before the global ranking (0 = purely global).

  Returns:
    ``[N, d]`` bool mask with exactly ``nnz`` True entries. Ties are broken by position (row-major),
    so the mask is deterministic.

  Raises:
    ValueError: a bad shape, m outside [0, d], or nnz outside [N·m, N·d].
  """
  table = np.asarray(table)
  if table.ndim != 2:
    raise ValueError(f"table: expected [N, d], got shape {table.shape}")
  n, d = table.shape
  if not 0 <= min_per_row <= d:
    raise ValueError(f"min_per_row={min_per_row}: expected 0 ≤ m ≤ d = {d}")
  if not n * min_per_row <= nnz <= n * d:
    raise ValueError(f"nnz={nnz}: expected {n * min_per_row} ≤ nnz ≤ {n * d} "
                     f"(N = {n}, d = {d}, m = {min_per_row})")
  mag = np.abs(table.astype(np.float64))
  mask = np.zeros((n, d), bool)
  if min_per_row:
    # the m largest of each row (stable: the earlier column wins a tie)
    top = np.argsort(-mag, axis=1, kind="stable")[:, :min_per_row]
    np.put_along_axis(mask, top, True, axis=1)
  rest = nnz - int(mask.sum())
  if rest:
    flat = np.where(mask, -np.inf, mag).reshape(-1)
    keep = np.argsort(-flat, kind="stable")[:rest]
    mask.reshape(-1)[keep] = True
  return mask


def empty_rows(mask: np.ndarray) -> int:
  """Rows of a ``[N, d]`` mask with no surviving entry (entities left without a vector)."""
  return int((~np.asarray(mask).any(axis=1)).sum())
