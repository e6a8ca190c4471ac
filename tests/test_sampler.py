import numpy as np
import pytest
import scipy.sparse as sp

from cerp_jax import sampler as S


def _train(seed=0, users=50, items=40):
  rng = np.random.default_rng(seed)
  m = (rng.random((users, items)) < 0.3).astype(np.float32)
  m[3] = 0  # a user without training items
  return sp.csr_matrix(m)


def test_no_positive_among_negatives_and_distinct():
  train = _train()
  s = S.BPRSampler(train, num_negatives=5, seed=1)
  users, items = s.epoch(0)
  assert items.shape == (train.nnz, 6)
  dense = train.toarray() > 0
  assert dense[users, items[:, 0]].all()  # column 0: positives
  assert not dense[users[:, None], items[:, 1:]].any()  # negatives are never train positives
  for row in items[:, 1:]:
    assert len(set(row.tolist())) == 5
  # every training positive exactly once per epoch
  keys = users.astype(np.int64) * 40 + items[:, 0]
  assert len(np.unique(keys)) == train.nnz


def test_deterministic_per_seed_and_epoch_and_modes():
  train = _train()
  a = S.BPRSampler(train, 3, seed=7)
  b = S.BPRSampler(train, 3, seed=7)
  np.testing.assert_array_equal(a.epoch(2)[1], b.epoch(2)[1])
  assert not np.array_equal(a.epoch(0)[1], a.epoch(1)[1])  # resampled
  f = S.BPRSampler(train, 3, mode="fixed", seed=7)
  np.testing.assert_array_equal(f.epoch(0)[1], f.epoch(5)[1])  # sampled once (original)


def test_parity_epoch_dict_semantics():
  train = _train()
  s = S.BPRSampler(train, 5, epoch_kind="parity", seed=3)
  users, items = s.epoch(0)
  keys = users.astype(np.int64) * 40 + items[:, 0]
  assert len(np.unique(keys)) == len(keys)  # de-duplicated (user, positive) keys
  assert len(keys) < train.nnz  # user-uniform draws with replacement lose duplicates
  assert 3 not in set(users.tolist())  # users without items are skipped
  dense = train.toarray() > 0
  assert dense[users, items[:, 0]].all()
  assert not dense[users[:, None], items[:, 1:]].any()


def test_impossible_negatives_refused():
  m = np.ones((2, 4), np.float32)
  m[1, :2] = 0
  with pytest.raises(ValueError, match="user 0"):
    S.BPRSampler(sp.csr_matrix(m), 1)


def test_to_steps_padding():
  users = np.arange(23, dtype=np.int32)
  items = np.stack([users, users + 1], 1)
  blocks, steps = S.to_steps(users, items, groups_per_step=5, steps_per_block=2)
  assert steps == 5
  assert blocks["users"].shape == (3, 2, 5)
  assert blocks["group_mask"].sum() == 23
  assert blocks["step_mask"].sum() == 5
  np.testing.assert_array_equal(blocks["users"].reshape(-1)[:23], users)


def test_triples_per_positive():
  train = _train()
  s = S.BPRSampler(train, 1, seed=0, triples_per_positive=5)
  users, items = s.epoch(0)
  assert items.shape == (train.nnz * 5, 2) and s.num_groups() == train.nnz * 5
  np.testing.assert_array_equal(users[:5], users[0])
  np.testing.assert_array_equal(items[:5, 0], items[0, 0])
  assert len(set(items[:5, 1].tolist())) == 5
  dense = train.toarray() > 0
  assert not dense[users, items[:, 1]].any()


def test_parity_triples_keep_every_draw():
  """The LightGCN code's epoch: nnz user-uniform draws (empty users skipped), 5 triples each with
  distinct negatives, no de-duplication of repeated (user, positive) draws, shuffled once."""
  train = _train()
  s = S.BPRSampler(train, 1, epoch_kind="parity", seed=3, triples_per_positive=5)
  users, items = s.epoch(0)
  assert len(users) % 5 == 0 and s.num_groups() == len(users)
  dedup = S.BPRSampler(train, 5, epoch_kind="parity", seed=3).num_groups()
  assert len(users) // 5 > dedup  # repeated draws kept
  keys = users.astype(np.int64) * 40 + items[:, 0]
  _, counts = np.unique(keys, return_counts=True)
  assert (counts % 5 == 0).all() and (counts > 5).any()
  assert not (users[0::5] == users[4::5]).all()  # shuffled: a draw's triples are not contiguous
  assert 3 not in set(users.tolist())
  dense = train.toarray() > 0
  assert dense[users, items[:, 0]].all() and not dense[users, items[:, 1]].any()
