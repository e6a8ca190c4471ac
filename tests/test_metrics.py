import jax
import pytest
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from cerp_jax import data as D
from cerp_jax import evaluation as ev


def _metrics(scores, held, excl=None, ks=(1, 3, 5)):
  scores = jnp.asarray(scores, jnp.float32)
  b = scores.shape[0]
  hr, hc = np.nonzero(np.asarray(held))
  er, ec = (np.nonzero(np.asarray(excl)) if excl is not None else (np.zeros(0, int),) * 2)
  pad = lambda x, f: np.concatenate([x, [f]]).astype(np.int32)
  m, top = ev.batch_metrics(scores, pad(er, b), pad(ec, 0), pad(hr, b), pad(hc, 0),
                            np.asarray(held).sum(1).astype(np.int32), ks)
  return {k: np.asarray(v) for k, v in m.items()}, np.asarray(top)


def test_one_hit_at_rank_one_with_three_relevant():
  scores = [[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]]
  held = [[1, 0, 0, 0, 1, 1]]  # relevant: items 0 (rank 1), 4 (rank 5), 5 (rank 6)
  m, _ = _metrics(scores, held, ks=(1, 3))
  idcg3 = 1 + 1 / np.log2(3) + 1 / np.log2(4)
  np.testing.assert_allclose(m["ndcg@1"], [1.0])  # IDCG over min(K=1, 3) = 1
  np.testing.assert_allclose(m["ndcg@3"], [1 / idcg3], rtol=1e-6)
  assert m["ndcg@3"][0] < 1
  np.testing.assert_allclose(m["recall@3"], [1 / 3], rtol=1e-6)
  np.testing.assert_allclose(m["precision@3"], [1 / 3], rtol=1e-6)
  np.testing.assert_allclose(m["hitrate@3"], [1.0])


def test_hand_computed_ranks():
  scores = [[0.1, 0.9, 0.3, 0.8, 0.2]]  # ranking: 1, 3, 2, 4, 0
  held = [[0, 0, 1, 0, 1]]  # relevant 2 (rank 3), 4 (rank 4)
  m, top = _metrics(scores, held, ks=(3, 5))
  np.testing.assert_array_equal(top[0], [1, 3, 2, 4, 0])
  idcg2 = 1 + 1 / np.log2(3)
  np.testing.assert_allclose(m["ndcg@3"], [(1 / np.log2(4)) / idcg2], rtol=1e-6)
  np.testing.assert_allclose(m["ndcg@5"], [(1 / np.log2(4) + 1 / np.log2(5)) / idcg2], rtol=1e-6)
  np.testing.assert_allclose(m["recall@3"], [0.5])
  np.testing.assert_allclose(m["recall@5"], [1.0])


def test_training_item_never_in_top_k():
  scores = [[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]]
  excl = [[1, 1, 0, 0, 0, 0]]  # the two best-scored items are training items
  held = [[0, 0, 1, 0, 0, 0]]
  m, top = _metrics(scores, held, excl, ks=(1, 3))
  assert 0 not in top[0][:3] and 1 not in top[0][:3]
  np.testing.assert_allclose(m["recall@1"], [1.0])
  np.testing.assert_allclose(m["ndcg@1"], [1.0])


def test_evaluator_masks_train_and_valid_for_test():
  u, i = 3, 6
  train = sp.csr_matrix(np.array([[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]],
                                 np.float32))
  valid = sp.csr_matrix(np.array([[0, 1, 0, 0, 0, 0], [0] * 6, [0] * 6], np.float32))
  test = sp.csr_matrix(np.array([[0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0] * 6], np.float32))
  data = D.Interactions("toy", u, i, train, valid, test)
  e = ev.Evaluator(data, "test", ks=(1, 2), batch_size=2)
  assert e.users.tolist() == [0, 1]  # user 2 has no test item: skipped

  def score_fn(args, users):
    return jnp.broadcast_to(args, (users.shape[0], i))

  res = e.evaluate(score_fn, jnp.array([9.0, 8.0, 7.0, 1.0, 0.0, 0.0]), return_topk=True)
  # user 0: items 0 (train) and 1 (valid) masked → top1 = 2 (hit); user 1: 1 masked → top1 = 0
  assert res["topk"][0, 0] == 2 and res["topk"][1, 0] == 0
  np.testing.assert_allclose(res["recall@1"], 0.5)
  np.testing.assert_allclose(res["recall@2"], 0.5)  # user 1: top2 = 0, 2 → miss


def test_user_sample_reports_ci():
  rng = np.random.default_rng(0)
  m = sp.csr_matrix((rng.random((40, 30)) < 0.2).astype(np.float32))
  tr, te = D.split_per_user(m, 0.3, 0, 2)
  data = D.Interactions("toy", 40, 30, tr, sp.csr_matrix((40, 30), dtype=np.float32), te)
  e = ev.Evaluator(data, "test", ks=(5,), batch_size=8, user_sample=10, seed=1)
  res = e.evaluate(lambda a, u: jnp.zeros((u.shape[0], 30)) + a, jnp.arange(30.0))
  assert res["sampled"] and res["num_users_evaluated"] == 10 and "recall@5_ci95" in res


def _assert_same_topk(x, k, block):
  v0, i0 = jax.lax.top_k(x, k)
  v1, i1 = ev.top_k(x, k, block)
  np.testing.assert_array_equal(np.asarray(i1), np.asarray(i0))
  np.testing.assert_array_equal(np.asarray(v1), np.asarray(v0))


@pytest.mark.parametrize("n,k,block", [(1000, 50, 16), (1001, 20, 32), (997, 5, 7), (4096, 50, 32)])
def test_blocked_top_k_equals_lax_top_k(n, k, block):
  x = jax.random.normal(jax.random.key(n), (17, n))
  _assert_same_topk(x, k, block)


def test_blocked_top_k_keeps_tie_order_and_minus_inf():
  rng = np.random.default_rng(0)
  x = np.round(rng.normal(size=(32, 1003)) * 1.5).astype(np.float32)  # many ties at the cut-off
  x[:8, 300:] = -np.inf                                                # masked items
  x[8:12] = 0.0                                                        # all-zero (pruned) vectors
  x[12, :] = -np.inf                                                   # nothing finite
  x[13, :5] = 1.0
  x[13, 5:] = -np.inf                                                  # fewer finite than k
  _assert_same_topk(jnp.asarray(x), 50, 16)
  _assert_same_topk(jnp.asarray(x), 20, 32)


def test_blocked_top_k_falls_back_when_it_cannot_help():
  x = jax.random.normal(jax.random.key(0), (3, 100))
  _assert_same_topk(x, 50, 32)  # too few chunks: lax.top_k directly
  _assert_same_topk(x, 5, 0)


def test_evaluator_same_results_for_every_topk_block():
  """The chunked top-K is an exact replacement: same metrics and top-K lists, ties included."""
  rng = np.random.default_rng(0)
  m = sp.csr_matrix((rng.random((60, 200)) < 0.1).astype(np.float32))
  tr, te = D.split_per_user(m, 0.3, 0, 2)
  data = D.Interactions("toy", 60, 200, tr, sp.csr_matrix((60, 200), dtype=np.float32), te)
  items = jnp.asarray(rng.normal(size=(200, 4)).astype(np.float32))
  users = jnp.asarray(rng.normal(size=(60, 4)).astype(np.float32))

  def score_fn(args, u):
    return jnp.round(args[0][u] @ args[1].T)  # rounded: ties at the cut-off

  out = []
  for block in (0, 4, 7):
    e = ev.Evaluator(data, "test", ks=(5, 10), batch_size=16, topk_block=block)
    out.append(e.evaluate(score_fn, (users, items), return_topk=True))
  assert out[1]["num_users_evaluated"] > 40
  for r in out[1:]:
    np.testing.assert_array_equal(r["topk"], out[0]["topk"])
    for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"):
      assert r[k] == out[0][k]


def test_score_buffer_cap_lowers_batch_size_not_results():
  rng = np.random.default_rng(1)
  m = sp.csr_matrix((rng.random((50, 300)) < 0.1).astype(np.float32))
  tr, te = D.split_per_user(m, 0.3, 0, 2)
  data = D.Interactions("toy", 50, 300, tr, sp.csr_matrix((50, 300), dtype=np.float32), te)
  vecs = jnp.asarray(rng.normal(size=(350, 4)).astype(np.float32))

  def score_fn(v, u):
    return v[u] @ v[50:].T

  big = ev.Evaluator(data, "test", ks=(5, 20), batch_size=64, max_score_bytes=0)
  small = ev.Evaluator(data, "test", ks=(5, 20), batch_size=64, max_score_bytes=4 * 300 * 7)
  assert big.batch_size == min(64, len(big.users)) and small.batch_size == 7
  a = big.evaluate(score_fn, vecs, return_topk=True)
  b = small.evaluate(score_fn, vecs, return_topk=True)
  np.testing.assert_array_equal(a["topk"], b["topk"])
  for k in ("recall@20", "ndcg@20", "precision@5", "hitrate@5"):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-12)
