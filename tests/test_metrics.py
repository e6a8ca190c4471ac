import jax
import jax.numpy as jnp
import numpy as np
import pytest
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


def test_threaded_batches_give_the_same_results_in_order():
  rng = np.random.default_rng(1)
  m = sp.csr_matrix((rng.random((50, 300)) < 0.1).astype(np.float32))
  tr, te = D.split_per_user(m, 0.3, 0, 2)
  data = D.Interactions("toy", 50, 300, tr, sp.csr_matrix((50, 300), dtype=np.float32), te)
  vecs = jnp.asarray(rng.normal(size=(350, 4)).astype(np.float32))

  def score_fn(v, u):
    return v[u] @ v[50:].T

  one = ev.Evaluator(data, "test", ks=(5, 20), batch_size=7, workers=1)
  three = ev.Evaluator(data, "test", ks=(5, 20), batch_size=7, workers=3)
  assert len(one.batches) > 3
  a = one.evaluate(score_fn, vecs, return_topk=True)
  b = three.evaluate(score_fn, vecs, return_topk=True)
  np.testing.assert_array_equal(a["topk"], b["topk"])
  for k in ("recall@20", "ndcg@20", "precision@5", "hitrate@5"):
    assert a[k] == b[k]


@pytest.mark.parametrize("n,k,group", [(5000, 50, 32), (4097, 20, 16), (1200, 7, 8)])
def test_two_pass_top_k_equals_lax_top_k(n, k, group):
  """Same values and ids as one top-K, ties to the smaller id, with ties, −∞ rows and a
  partial last group (comparisons only: exact on every CPU)."""
  rng = np.random.default_rng(n)
  s = np.round(rng.standard_normal((24, n)) * 2) / 2  # few distinct values: many ties
  s[rng.random(s.shape) < 0.5] = -np.inf
  s[3] = -np.inf  # a row with no finite score
  s[4, :] = -np.inf
  s[4, [7, n - 1, n // 2]] = [1.0, 1.0, 2.0]  # fewer than k finite, one in the last group
  s = jnp.asarray(s, jnp.float32)
  want_v, want_i = jax.lax.top_k(s, k)
  got_v, got_i = jax.jit(lambda x: ev.top_k(x, k, group))(s)
  np.testing.assert_array_equal(np.asarray(got_i), np.asarray(want_i))
  np.testing.assert_array_equal(np.asarray(got_v), np.asarray(want_v))


def test_hits_equal_a_dense_held_out_mask():
  """batch_metrics' per-pair hit count equals the dense [B, I] mask lookup, padding included."""
  rng = np.random.default_rng(7)
  scores = rng.standard_normal((6, 3000)).astype(np.float32)
  held = rng.random((6, 3000)) < 0.01
  held[:, np.argsort(-scores, axis=1)[:, :3]] = True  # some hits near the top
  held[5] = False
  m, top = _metrics(scores, held, ks=(10, 50))
  hits = np.take_along_axis(held, top, axis=1)
  n = np.maximum(held.sum(1), 1)
  np.testing.assert_allclose(m["recall@50"], hits[:, :50].sum(1) / n, rtol=1e-6)
  np.testing.assert_allclose(m["recall@10"], hits[:, :10].sum(1) / n, rtol=1e-6)
