"""QR, hashing and PEP embeddings: shapes, parameter/byte counts, gradients, collisions, and PEP
through the generic prune → retrain → pack path."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cerp_jax import baselines as B
from cerp_jax import budget
from cerp_jax import data as D
from cerp_jax import embeddings as E
from cerp_jax import finalize
from cerp_jax import packing
from cerp_jax import train as T


def _init(module, ids=jnp.arange(3)):
  return module.init(jax.random.key(0), ids)


def _packed_size(module, variables) -> int:
  tables = {k: np.asarray(v) for k, v in module.apply(variables, method=module.tables).items()}
  blob, rep = packing.pack(tables)
  assert rep["packed_bytes"] == len(blob)
  return len(blob)


# --------------------------------------------------------------------------------------------------
# QR
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op,out", [("mult", 4), ("add", 4), ("concat", 8)])
@pytest.mark.parametrize("n,b", [(23, 5), (23, 23), (23, 1), (100, 7)])
def test_qr_shapes_counts_and_compose(op, out, n, b):
  m = B.QREmbedding(num_entities=n, num_collisions=b, features=4, operation=op)
  v = _init(m)
  p = v["params"]
  q_rows = -(-n // b)
  assert p["Q"].shape == (q_rows, 4) and p["R"].shape == (b, 4)
  assert m.num_parameters() == (q_rows + b) * 4 == sum(x.size for x in jax.tree_util.tree_leaves(p))
  assert m.out_dim == out
  vecs = m.apply(v, method=m.embed_all)
  assert vecs.shape == (n, out) and vecs.dtype == jnp.float32
  i = n - 1
  eq, er = p["Q"][i // b], p["R"][i % b]
  want = {"mult": eq * er, "add": eq + er, "concat": jnp.concatenate([eq, er])}[op]
  np.testing.assert_allclose(vecs[i], want, rtol=1e-6)
  # packed bytes: exactly the formula of the two dense tables
  assert _packed_size(m, v) == budget.dense_bytes([("Q", q_rows, 4), ("R", b, 4)]) == \
      budget.qr_bytes(n, b, 4)


@pytest.mark.parametrize("n", [1, 10, 320, 70839])
def test_qr_pairs_unique_for_every_b(n):
  """Complementary partitions: (id div b, id mod b) is unique for every b (Shi et al. 2020)."""
  ids = np.arange(n)
  for b in sorted({1, 2, 3, max(1, int(np.sqrt(n)) - 1), int(np.sqrt(n)) + 1, n // 2 or 1, n}):
    q, r = B.qr_indices(ids, b)
    assert q.max() < B.qr_num_quotients(n, b) and r.max() < b
    assert len(np.unique(q * b + r)) == n
    np.testing.assert_array_equal(q * b + r, ids)  # id = q·b + r


def test_qr_init_scale_and_distinct_vectors():
  for op in ("mult", "add"):
    m = B.QREmbedding(num_entities=4000, num_collisions=64, features=32, operation=op)
    vecs = np.asarray(m.apply(_init(m), method=m.embed_all))
    assert 0.07 < vecs.std() < 0.13  # the full table's init scale 0.1
    assert len(np.unique(vecs, axis=0)) == 4000


def test_qr_gradients_flow_to_both_tables():
  m = B.QREmbedding(num_entities=30, num_collisions=6, features=3)
  v = _init(m)
  ids = jnp.array([0, 7, 29])
  g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, ids) ** 2))(v["params"])
  # rows read: Q[0], Q[1], Q[4]; R[0], R[1], R[5]
  assert set(np.nonzero(np.abs(g["Q"]).sum(1))[0].tolist()) == {0, 1, 4}
  assert set(np.nonzero(np.abs(g["R"]).sum(1))[0].tolist()) == {0, 1, 5}


def test_qr_errors():
  with pytest.raises(ValueError, match="num_collisions b=0"):
    B.QREmbedding(num_entities=10, num_collisions=0, features=2)
  with pytest.raises(ValueError, match="must lie in"):
    B.QREmbedding(num_entities=10, num_collisions=11, features=2)
  with pytest.raises(ValueError, match="operation='max'"):
    B.QREmbedding(num_entities=10, num_collisions=3, features=2, operation="max")


# --------------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hash_shapes_counts_and_compose(k):
  m = B.HashEmbedding(num_entities=50, num_buckets=13, features=4, num_hashes=k, seed=5)
  v = _init(m)
  assert v["params"]["T"].shape == (13, 4)
  assert m.num_parameters() == 13 * 4
  vecs = m.apply(v, method=m.embed_all)
  assert vecs.shape == (50, 4)
  idx = B.hash_indices(np.arange(50), 13, k, 5, xp=np)
  np.testing.assert_allclose(vecs, np.asarray(v["params"]["T"])[idx].sum(1), rtol=1e-6, atol=1e-7)
  assert _packed_size(m, v) == budget.dense_bytes([("T", 13, 4)])


def test_hash_indices_numpy_equals_jax_seeded_and_in_range():
  ids = np.arange(5000)
  a = B.hash_indices(ids, 997, 3, 7, xp=np)
  b = np.asarray(B.hash_indices(jnp.asarray(ids, jnp.int32), 997, 3, 7))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (5000, 3) and a.min() >= 0 and a.max() < 997
  np.testing.assert_array_equal(a, B.hash_indices(ids, 997, 3, 7, xp=np))  # deterministic
  assert (a != B.hash_indices(ids, 997, 3, 8, xp=np)).mean() > 0.9  # another seed, other functions
  assert (a[:, 0] != a[:, 1]).mean() > 0.9  # the k functions differ
  # roughly uniform: with ~50 ids per bucket every bucket is hit and none gets twice the mean
  counts = np.bincount(B.hash_indices(np.arange(50_000), 997, 1, 7, xp=np)[:, 0], minlength=997)
  assert counts.min() > 0 and counts.max() < 2 * 50_000 / 997


def test_hash_collision_counts_as_documented():
  n, b = 2000, 1000
  idx = B.hash_indices(np.arange(n), b, 1, 0, xp=np)[:, 0]
  brute = sum(1 for i in range(n) if np.sum(idx == idx[i]) > 1)
  assert B.hash_collisions(n, b, 1, 0) == brute
  expected = B.expected_hash_collisions(n, b, 1)
  assert abs(expected - n * (1 - (1 - 1 / b) ** (n - 1))) < 1e-9
  assert abs(brute - expected) < 0.05 * expected
  # two hash functions: full collisions of the (h1, h2) pair are rare (expectation ≈ 4)
  assert B.hash_collisions(n, b, 2, 0) <= 20
  assert B.expected_hash_collisions(n, b, 2) < 5


def test_hash_gradients_flow_to_hashed_rows_only():
  m = B.HashEmbedding(num_entities=40, num_buckets=50, features=3, num_hashes=2)
  v = _init(m)
  ids = jnp.array([1, 2, 3])
  g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, ids)))(v["params"])["T"]
  rows = set(B.hash_indices(np.asarray(ids), 50, 2, 0, xp=np).ravel().tolist())
  assert set(np.nonzero(np.abs(g).sum(1))[0].tolist()) == rows


def test_hash_errors():
  with pytest.raises(ValueError, match="B=0"):
    B.HashEmbedding(num_entities=10, num_buckets=0, features=2)
  with pytest.raises(ValueError, match="k=0"):
    B.HashEmbedding(num_entities=10, num_buckets=3, features=2, num_hashes=0)


# --------------------------------------------------------------------------------------------------
# PEP
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ttype,shape", [("element-wise", (20, 4)), ("dimension", (1, 4)),
                                         ("row", (20, 1)), ("global", (1, 1))])
def test_pep_threshold_granularity_and_prune_tables(ttype, shape):
  m = B.PEPEmbedding(num_entities=20, features=4, threshold_type=ttype)
  v = _init(m)
  p = v["params"]
  assert set(p) == {"E", "S_E"} and p["E"].shape == (20, 4) and p["S_E"].shape == shape
  np.testing.assert_array_equal(p["S_E"], np.full(shape, -15.0))  # PEP's code
  assert m.num_parameters() == 80
  s = jnp.asarray(np.random.default_rng(0).normal(-2.0, 0.5, shape), jnp.float32)
  v2 = {"params": {"E": p["E"], "S_E": s}}
  t = m.apply(v2, method=m.tables)["E"]
  np.testing.assert_allclose(t, E.soft_threshold(p["E"], s), rtol=1e-6)
  np.testing.assert_allclose(m.apply(v2, jnp.array([3, 5])), t[jnp.array([3, 5])], rtol=1e-6)
  assert 0 < int(np.count_nonzero(t)) < 80


def test_pep_gradients_flow_to_weights_and_thresholds():
  m = B.PEPEmbedding(num_entities=10, features=3)
  p = dict(_init(m)["params"])
  p["S_E"] = jnp.full((10, 3), -2.5)  # σ ≈ 0.076: some entries survive, thresholds not saturated
  ids = jnp.arange(10)
  g = jax.grad(lambda p: jnp.sum(m.apply({"params": p}, ids) ** 2))(p)
  alive = np.asarray(E.soft_threshold(p["E"], p["S_E"])) != 0
  assert alive.any() and (~alive).any()
  assert np.all(np.asarray(g["E"])[alive] != 0) and np.all(np.asarray(g["E"])[~alive] == 0)
  assert np.all(np.asarray(g["S_E"])[alive] != 0)


def test_pep_retrain_and_dense_modes():
  m = B.PEPEmbedding(num_entities=6, features=2, mode=E.RETRAIN)
  v = _init(m)
  assert set(v["params"]) == {"E"} and v["masks"]["E"].shape == (6, 2)
  mask = np.ones((6, 2), np.float32)
  mask[1, 0] = 0
  v = {"params": v["params"], "masks": {"E": jnp.asarray(mask)}}
  t = m.apply(v, method=m.tables)["E"]
  assert float(t[1, 0]) == 0.0 and float(t[1, 1]) != 0.0
  g = jax.grad(lambda p: jnp.sum(m.apply({"params": p, "masks": v["masks"]}, jnp.arange(6))))(
      v["params"])["E"]
  assert float(g[1, 0]) == 0.0 and float(g[1, 1]) != 0.0
  dm = B.PEPEmbedding(num_entities=6, features=2, mode=E.DENSE)
  assert set(_init(dm)["params"]) == {"E"}


def test_pep_packed_bytes_formula():
  m = B.PEPEmbedding(num_entities=300, features=16, mode=E.RETRAIN)
  v = _init(m)
  rng = np.random.default_rng(1)
  for nnz in (0, 100, 1000, 4000, 4800):
    mask = np.zeros(4800, np.float32)
    mask[rng.choice(4800, nnz, replace=False)] = 1
    vv = {"params": v["params"], "masks": {"E": jnp.asarray(mask.reshape(300, 16))}}
    assert _packed_size(m, vv) == int(budget.pep_bytes(300, 16, nnz))


def test_pep_errors():
  with pytest.raises(ValueError, match="threshold_type='field'"):
    B.PEPEmbedding(num_entities=5, features=2, threshold_type="field")


# --------------------------------------------------------------------------------------------------
# Registry and the generic training path
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qr", "hash"])
def test_unpruned_baselines_train_once(test_config, tmp_path, name):
  test_config.model.embedding = name
  test_config.model.bucket_size = 12
  test_config.model.hash_rows = 30
  test_config.retrain.max_epochs = 2
  out = T.train_and_evaluate(test_config, str(tmp_path / "w"))
  assert list(out) == ["full"] and np.isfinite(out["full"]["test"]["ndcg@20"])
  assert not (tmp_path / "w" / "prune").exists()


def test_pep_prunes_with_the_shared_machinery(test_config, tmp_path):
  """PEP goes through prune_stage (snapshots per budget), retrain_stage (mask, rewinding) and
  finalize.evaluate_workdir (packing) exactly like CERP."""
  c = test_config
  c.model.embedding = "pep"
  c.model.pep_threshold_init = -3.0
  c.prune.gamma_init = 0.0
  c.target_sparsities = (0.3, 0.6)
  c.retrain.max_epochs = 2
  wd = str(tmp_path / "pep")
  out = T.train_and_evaluate(c, wd)
  assert set(out) == {"sparsity_0.3000", "sparsity_0.6000"}
  data = D.load_interactions(c)
  ps, summary = T.load_prune_results(c, data, wd)
  entries = data.num_entities * c.model.dim
  assert summary["num_entries"] == entries
  assert set(ps.snapshots) == {"E"} and ps.initial["E"].shape == (data.num_entities, c.model.dim)
  ev = finalize.evaluate_workdir(wd)
  for i, (t, row) in enumerate(zip(summary["targets"], ev["results"])):
    assert t["reached"] and t["nonzeros"] <= t["budget"] == int((1 - t["target_sparsity"]) * entries)
    # the packed table keeps exactly the snapshot's support
    assert row["nonzeros"] == int(np.count_nonzero(ps.snapshots["E"][i])) == t["nonzeros"]
    assert row["packed_bytes"] == int(budget.pep_bytes(data.num_entities, c.model.dim,
                                                        row["nonzeros"]))
    assert os.path.getsize(row["packed_file"]) == row["packed_bytes"]
    assert packing.read_header(row["packed_file"]) == packing.PackedMeta(
        "pep", c.model.backbone, "", "float32", data.num_users, data.num_items, data.num_users,
        c.model.dim)  # self-describing: eval.py wrote the method's meta
  with open(os.path.join(wd, "eval.json")) as f:
    assert json.load(f)["embedding"] == "pep"
  # benchmarks/mf_puzzles.py counts the entities each snapshot leaves without a vector
  from benchmarks import mf_puzzles  # pylint: disable=g-import-not-at-top
  rows = mf_puzzles.pep_snapshot_rows(wd, data)
  for i, row in enumerate(rows):
    empty = ~np.asarray(ps.snapshots["E"][i]).any(axis=1)
    assert (row["empty_user_rows"], row["empty_item_rows"]) == (
        int(empty[:data.num_users].sum()), int(empty[data.num_users:].sum()))
    assert row["budget"] == "–" and f"nnz={summary['targets'][i]['nonzeros']:,}" in row["setting"]
