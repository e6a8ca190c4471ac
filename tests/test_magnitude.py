import numpy as np
import pytest

from cerp_jax import magnitude as M


def test_global_keeps_the_largest():
  t = np.array([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3], [0.05, 0.01, 0.02]], np.float32)
  mask = M.magnitude_mask(t, 3)
  np.testing.assert_array_equal(mask, [[0, 1, 0], [1, 0, 1], [0, 0, 0]])
  assert M.empty_rows(mask) == 1


def test_min_per_row_fills_every_row_first():
  t = np.array([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3], [0.05, 0.01, 0.02]], np.float32)
  mask = M.magnitude_mask(t, 4, min_per_row=1)
  # rows keep -5.0, 3.0, 0.05; the one left over goes to the largest remaining: -0.3
  np.testing.assert_array_equal(mask, [[0, 1, 0], [1, 0, 1], [1, 0, 0]])
  assert M.empty_rows(mask) == 0


@pytest.mark.parametrize("m", [0, 1, 3])
def test_exact_count_and_row_minimum(m):
  rng = np.random.default_rng(0)
  t = rng.normal(size=(200, 8)) * rng.gamma(0.5, size=(200, 1))  # rows of very unequal scale
  nnz = 900
  mask = M.magnitude_mask(t, nnz, min_per_row=m)
  assert mask.sum() == nnz
  assert mask.sum(axis=1).min() >= m
  # every dropped entry outside the row minimum is no larger than every kept global entry
  if m == 0:
    assert np.abs(t[mask]).min() >= np.abs(t[~mask]).max()
    assert M.empty_rows(mask) > 0  # the small-scale rows lose everything


def test_ties_are_deterministic():
  t = np.ones((4, 4))
  a = M.magnitude_mask(t, 5)
  np.testing.assert_array_equal(a, M.magnitude_mask(t.copy(), 5))
  assert a.reshape(-1)[:5].all() and not a.reshape(-1)[5:].any()


def test_refuses_bad_arguments():
  t = np.zeros((3, 2))
  with pytest.raises(ValueError, match="expected 3 ≤ nnz ≤ 6"):
    M.magnitude_mask(t, 2, min_per_row=1)
  with pytest.raises(ValueError, match="min_per_row=3"):
    M.magnitude_mask(t, 4, min_per_row=3)
  with pytest.raises(ValueError, match=r"expected \[N, d\]"):
    M.magnitude_mask(np.zeros(3), 1)


def test_choose_min_per_row_takes_the_best_score_and_skips_infeasible_m():
  rng = np.random.default_rng(1)
  t = rng.normal(size=(10, 4)).astype(np.float32)
  seen = []

  def score(pruned):  # a stand-in for validation NDCG: prefers the fewest empty rows
    seen.append(pruned.copy())
    return -float(M.empty_rows(pruned != 0))

  c = M.choose_min_per_row(t, 15, (0, 1, 2, 4, 8), score)
  assert list(c.scores) == [0, 1]  # 10·2 > 15, 4 and 8 > d: skipped
  assert c.min_per_row == 1 and c.scores[1] == max(c.scores.values())
  assert c.mask.sum() == 15 and M.empty_rows(c.mask) == 0
  np.testing.assert_allclose(c.table, np.where(c.mask, t, 0))
  assert len(seen) == 2
  tie = M.choose_min_per_row(t, 40, (2, 0, 1), lambda p: 1.0)  # a tie: the earlier m
  assert tie.min_per_row == 2
  with pytest.raises(ValueError, match="no m with"):
    M.choose_min_per_row(t, 5, (1, 2), score)
  assert M.feasible_min_per_row((0, 1, 1, 5, -1), 40, 10, 4) == [0, 1]
