"""BPR groups ``[pos, neg_1 … neg_K]`` per (user, positive), vectorised numpy; epoch e's sample
depends only on ``(seed, e)``. Negatives: uniform over all items, distinct within a group, never a
training positive of the user (docs/algorithm.md, Samples and epochs)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class BPRSampler:
  """Draws epochs of BPR groups.

  Args:
    train: ``[U, I]`` CSR of ones, the training positives.
    num_negatives: K ≥ 1.
    mode: 'resample' (new sample per epoch) | 'fixed' (epoch 0's reused, as the authors' code).
    epoch_kind: 'positives' (every training positive once, shuffled) | 'parity' (the authors':
      ``nnz(train)`` user-uniform draws in draw order, de-duplicated on (user, positive) unless
      t > 1).
    seed: numpy seed.
    triples_per_positive: t > 1 (needs K = 1): t groups ``[pos, neg_j]`` per positive with distinct
      negatives, adjacent (the parity epoch shuffles them once, as the LightGCN code does).

  Raises:
    ValueError: bad mode/kind, K < 1, t > 1 with K ≠ 1, or a user with fewer than K non-positives.
  """

  def __init__(self, train: sp.csr_matrix, num_negatives: int, mode: str = "resample",
               epoch_kind: str = "positives", seed: int = 0, triples_per_positive: int = 1):
    if mode not in ("resample", "fixed"):
      raise ValueError(f"sampling mode={mode!r}: expected 'resample' or 'fixed'")
    if epoch_kind not in ("positives", "parity"):
      raise ValueError(f"epoch kind={epoch_kind!r}: expected 'positives' or 'parity'")
    if num_negatives < 1:
      raise ValueError(f"num_negatives must be ≥ 1, got {num_negatives}")
    if triples_per_positive > 1:
      if num_negatives != 1:
        raise ValueError(f"triples_per_positive={triples_per_positive} needs num_negatives=1")
      num_negatives = triples_per_positive
    self.triples = triples_per_positive
    self.train = train.tocsr()
    self.train.sort_indices()
    self.num_users, self.num_items = train.shape
    self.num_negatives = num_negatives
    self.mode, self.epoch_kind, self.seed = mode, epoch_kind, seed
    counts = np.diff(self.train.indptr)
    if counts.max(initial=0) > self.num_items - num_negatives:
      u = int(np.argmax(counts))
      raise ValueError(f"user {u} has {counts[u]} training items of {self.num_items}: fewer than "
                       f"{num_negatives} distinct negatives exist")
    self._counts = counts
    self._users = np.repeat(np.arange(self.num_users, dtype=np.int64), counts)
    self._keys = self._users * self.num_items + self.train.indices  # sorted (CSR, sorted indices)
    self._cache = None

  def num_groups(self) -> int:
    """Groups per epoch (the parity count is that of epoch 0's draw)."""
    if self.epoch_kind == "positives":
      return self.train.nnz * max(self.triples, 1)
    return len(self.epoch(0)[0])

  def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Bool array: is ``items`` (any shape, rows matching ``users [n]``) a training positive?"""
    keys = users.reshape(-1, *([1] * (items.ndim - 1))) * self.num_items + items
    pos = np.searchsorted(self._keys, keys)
    pos = np.minimum(pos, len(self._keys) - 1)
    return self._keys[pos] == keys

  def negatives(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
    """``[n, K] int64`` distinct negatives per row, rejecting each user's training positives."""
    n, k = len(users), self.num_negatives
    neg = rng.integers(0, self.num_items, size=(n, k))
    bad = np.ones(n, bool)
    while bad.any():
      rows = np.nonzero(bad)[0]
      sub = neg[rows]
      clash = self.is_positive(users[rows], sub)
      for j in range(1, k):  # a repeat of an earlier column in the same row
        clash[:, j] |= (sub[:, :j] == sub[:, j:j + 1]).any(axis=1)
      sub[clash] = rng.integers(0, self.num_items, size=int(clash.sum()))
      neg[rows] = sub
      bad[:] = False
      bad[rows[clash.any(axis=1)]] = True
    return neg

  def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups of epoch ``epoch``: users ``[n] int32``, items ``[n, 1 + K] int32`` (column 0 the
    positive)."""
    if self.mode == "fixed":
      if self._cache is None:
        self._cache = self._draw(0)
      return self._cache
    return self._draw(epoch)

  def _draw(self, epoch: int):
    rng = np.random.default_rng([self.seed, epoch])
    if self.epoch_kind == "positives":
      order = rng.permutation(self.train.nnz)
      users = self._users[order]
      pos = self.train.indices[order].astype(np.int64)
      neg = self.negatives(rng, users)
    else:
      draws = rng.integers(0, self.num_users, size=self.train.nnz)
      draws = draws[self._counts[draws] > 0]
      pick = (rng.random(len(draws)) * self._counts[draws]).astype(np.int64)
      all_pos = self.train.indices[self.train.indptr[draws] + pick].astype(np.int64)
      all_neg = self.negatives(rng, draws)
      if self.triples > 1:  # every draw's triples, duplicates included
        users, pos, neg = draws, all_pos, all_neg
      else:  # dict semantics: first-seen order of keys, values from the last draw of each key.
        keys = draws * self.num_items + all_pos
        first = np.unique(keys, return_index=True)[1]
        last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]
        order = np.argsort(first, kind="stable")
        users, pos, neg = draws[first[order]], all_pos[first[order]], all_neg[last[order]]
    if self.triples > 1:  # K separate (u, pos, neg) triples per positive (LightGCN-PyTorch)
      users = np.repeat(users, self.triples)
      items = np.stack([np.repeat(pos, self.triples), neg.reshape(-1)], axis=1)
      if self.epoch_kind == "parity":  # the LightGCN code shuffles its list of triples once
        order = rng.permutation(len(users))
        users, items = users[order], items[order]
    else:
      items = np.concatenate([pos[:, None], neg], axis=1)
    return users.astype(np.int32), items.astype(np.int32)


def to_steps(users: np.ndarray, items: np.ndarray, groups_per_step: int, steps_per_block: int):
  """One epoch in blocks of steps, padded with masked groups and steps: (dict of numpy arrays
  ``users [S_b, s, G]``, ``items [S_b, s, G, 1+K]``, ``group_mask [S_b, s, G]`` bool, ``step_mask
  [S_b, s]`` bool with s = ``steps_per_block``; the number of real steps ``ceil(n / G)``)."""
  n = len(users)
  steps = -(-n // groups_per_step)
  blocks = -(-steps // steps_per_block)
  total = blocks * steps_per_block * groups_per_step
  pad = total - n
  shape = (blocks, steps_per_block, groups_per_step)
  u = np.pad(users, (0, pad)).reshape(shape)
  it = np.pad(items, ((0, pad), (0, 0))).reshape(shape + (items.shape[1],))
  gm = (np.arange(total) < n).reshape(shape)
  sm = gm.any(axis=-1)
  return {"users": u, "items": it, "group_mask": gm, "step_mask": sm}, steps
