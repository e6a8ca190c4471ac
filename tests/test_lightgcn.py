import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from cerp_jax import data as D
from cerp_jax import embeddings as E
from cerp_jax import graph
from cerp_jax import models
from cerp_jax import train as T


def _toy_train():
  # 2 users, 3 items: u0–i0, u0–i1, u1–i1, u1–i2
  return sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1]], np.float32))


def test_normalization_hand_computed():
  adj = graph.normalized_adjacency(_toy_train()).toarray()
  # node order: u0, u1, i0, i1, i2; degrees 2, 2, 1, 2, 1
  expected = np.zeros((5, 5), np.float32)
  for u, i, du, di in [(0, 2, 2, 1), (0, 3, 2, 2), (1, 3, 2, 2), (1, 4, 2, 1)]:
    expected[u, i] = expected[i, u] = 1 / np.sqrt(du * di)
  np.testing.assert_allclose(adj, expected, rtol=1e-6)
  assert np.all(np.diag(adj) == 0)  # no self-loops


def test_held_out_edges_never_in_adjacency(test_config):
  data = D.load_interactions(test_config)
  adj = graph.normalized_adjacency(data.train).tocoo()
  u = data.num_users
  edges = set(zip(adj.row.tolist(), adj.col.tolist()))
  for split in (data.valid, data.test):
    c = split.tocoo()
    for r, i in zip(c.row.tolist(), c.col.tolist()):
      assert (r, u + i) not in edges and (u + i, r) not in edges
  assert adj.nnz == 2 * data.train.nnz


def _dense_propagation(adj, x, layers):
  out, h = x, x
  for _ in range(layers):
    h = adj @ h
    out = out + h
  return out / (layers + 1)


def test_propagation_and_gradient_equal_dense():
  adj = graph.normalized_adjacency(_toy_train())
  g = {k: jnp.asarray(v) for k, v in graph.graph_arrays(adj).items()}
  x = jax.random.normal(jax.random.key(0), (5, 4))
  lgn = models.LightGCN(num_nodes=5, num_edges=adj.nnz, num_layers=3)
  v = {"graph": g}
  out = lgn.apply(v, x, method=models.LightGCN.propagate)
  dense = jnp.asarray(adj.toarray())
  np.testing.assert_allclose(out, _dense_propagation(dense, x, 3), rtol=1e-5, atol=1e-6)
  w = jax.random.normal(jax.random.key(1), (5, 4))
  g1 = jax.grad(lambda x: jnp.sum(lgn.apply(v, x, method=models.LightGCN.propagate) * w))(x)
  g2 = jax.grad(lambda x: jnp.sum(_dense_propagation(dense, x, 3) * w))(x)
  np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def _random_train(users=40, items=60, seed=0):
  r = sp.random(users, items, density=0.08, random_state=seed, format="csr", dtype=np.float32)
  r.data[:] = 1.0
  return r


def test_graph_arrays_store_adj_in_locality_order():
  adj = graph.normalized_adjacency(_random_train())
  n = adj.shape[0]
  g = graph.graph_arrays(adj)
  perm, inv = g["perm"], g["inv"]
  assert perm.dtype == inv.dtype == np.int32
  np.testing.assert_array_equal(np.sort(perm), np.arange(n))  # a permutation …
  np.testing.assert_array_equal(inv[perm], np.arange(n))      # … and its inverse
  assert not np.array_equal(perm, np.arange(n))  # the locality order is not the id order here
  stored = sp.csr_matrix((g["data"], g["indices"], g["indptr"]), shape=(n, n))
  np.testing.assert_array_equal(stored.toarray(), adj.toarray()[perm][:, perm])
  np.testing.assert_array_equal(g["rows"], np.repeat(np.arange(n), np.diff(g["indptr"])))
  ids = graph.graph_arrays(adj, reorder=False)
  np.testing.assert_array_equal(ids["perm"], np.arange(n))
  np.testing.assert_array_equal(ids["indices"], adj.indices)


def test_locality_order_shortens_the_bandwidth():
  # what the order is for: non-zeros near the diagonal (rows gather rows stored near each other)
  adj = graph.normalized_adjacency(_random_train(200, 300, seed=1)).tocoo()
  perm = graph.locality_order(adj.tocsr())
  inv = np.empty_like(perm)
  inv[perm] = np.arange(perm.size)
  assert np.abs(inv[adj.row] - inv[adj.col]).max() < np.abs(adj.row - adj.col).max()


@pytest.mark.parametrize("mode", ["native", "bcsr"])
def test_propagation_in_locality_order_equals_dense(mode, monkeypatch):
  monkeypatch.setenv("CERP_SPMM", mode)  # read at trace time: the kernel, or BCSR and XLA's gather
  adj = graph.normalized_adjacency(_random_train())
  n = adj.shape[0]
  g = {k: jnp.asarray(v) for k, v in graph.graph_arrays(adj).items()}
  x = jax.random.normal(jax.random.key(0), (n, 8))
  w = jax.random.normal(jax.random.key(1), (n, 8))
  lgn = models.LightGCN(num_nodes=n, num_edges=adj.nnz, num_layers=3)
  prop = jax.jit(lambda x: lgn.apply({"graph": g}, x, method=models.LightGCN.propagate))
  # native: 3 products and the 2 permutations in the kernel; bcsr: none of them
  assert prop.lower(x).as_text().count("@cerp_csr_spmm(") == (5 if mode == "native" else 0)
  dense = jnp.asarray(adj.toarray())
  np.testing.assert_allclose(prop(x), _dense_propagation(dense, x, 3), rtol=1e-5, atol=1e-6)
  g1 = jax.jit(jax.grad(lambda x: jnp.sum(prop(x) * w)))(x)
  g2 = jax.grad(lambda x: jnp.sum(_dense_propagation(dense, x, 3) * w))(x)
  np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


def _lgn_config(test_config):
  test_config.model.backbone = "lightgcn"
  test_config.model.threshold_init = -2.0
  return test_config


def test_gradients_reach_p_q_and_thresholds(test_config):
  c = _lgn_config(test_config)
  data = D.load_interactions(c)
  model = models.create_model(c, data, E.PRUNE)
  variables = models.init_variables(model, 0, 6)
  consts = models.model_consts(c, data)
  users = jnp.array([0, 1, 2], jnp.int32)
  items = jnp.array([[0, 5], [1, 6], [2, 7]], jnp.int32)

  def loss(p):
    scores, *_ = model.apply({"params": p, **consts}, users, items)
    return -jnp.sum(jax.nn.log_sigmoid(scores[:, 0] - scores[:, 1]))

  grads = jax.grad(loss)(variables["params"])["embedding"]
  for k in ("P", "Q", "S_P", "S_Q"):
    assert float(jnp.abs(grads[k]).sum()) > 0, k
  # rows used by no batch entity directly still get gradient through propagation: the number of
  # P rows with non-zero gradient exceeds the rows the 9 batch entities index
  rows_direct = {int(i) % c.model.bucket_size
                 for i in np.concatenate([users, items.ravel() + data.num_users])}
  rows_grad = set(np.nonzero(np.abs(np.asarray(grads["P"])).sum(1))[0].tolist())
  assert len(rows_grad - rows_direct) > 0


def test_evaluation_uses_the_parameters_it_is_given(test_config):
  c = _lgn_config(test_config)
  data = D.load_interactions(c)
  from cerp_jax import evaluation as ev
  model = models.create_model(c, data, E.PRUNE)
  consts = models.model_consts(c, data)
  v1 = {**models.init_variables(model, 0, 2), **consts}
  v2 = {**models.init_variables(model, 1, 2), **consts}
  e = ev.Evaluator(data, "test", (5, 20), 16)
  score_fn = models.make_score_fn(model, data.num_users)
  vec = models.make_vectors_fn(model)
  users = jnp.arange(8, dtype=jnp.int32)
  s1 = jax.jit(score_fn)((v1, vec(v1)), users)
  s2 = jax.jit(score_fn)((v2, vec(v2)), users)
  assert not np.allclose(s1, s2)
  r1 = e.evaluate(score_fn, (v1, vec(v1)))
  # one training step changes the evaluator's scores
  tx = T.make_optimizer(c.prune)
  p = v1["params"]
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p, **consts}, users[:2],
                                                 jnp.array([[0, 1], [2, 3]]))[0]))(p)
  upd, _ = tx.update(grads, tx.init(p), p)
  import optax
  v3 = {**v1, "params": optax.apply_updates(p, upd)}
  s3 = jax.jit(score_fn)((v3, vec(v3)), users)
  assert not np.allclose(s1, s3)
  assert np.isfinite(r1["ndcg@20"])


def test_lightgcn_trains_end_to_end(test_config, tmp_path):
  c = _lgn_config(test_config)
  c.prune.max_epochs = 10
  c.target_sparsities = (0.1,)
  out = T.train_and_evaluate(c, str(tmp_path / "w"))
  assert np.isfinite(out["sparsity_0.1000"]["test"]["recall@20"])


def test_first_occurrence():
  np.testing.assert_array_equal(T.first_occurrence(jnp.array([3, 1, 3, 2, 1])),
                                [True, True, False, True, False])
