import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cerp_jax import embeddings as E
from cerp_jax import models


@pytest.mark.parametrize("n", [1, 2, 10, 70839, 116198, 12345])
def test_smallest_valid_bucket_size_is_minimal(n):
  b = E.smallest_valid_bucket_size(n)
  assert E.quotient_divisor(n, b) <= b
  if b > 1:
    assert E.quotient_divisor(n, b - 1) > b - 1


def test_spec_bounds():
  # Gowalla (29,858 + 40,981) needs b ≥ 267; Yelp2020 (N = 116,198) needs b ≥ 341.
  assert E.smallest_valid_bucket_size(29858 + 40981) == 267
  assert E.smallest_valid_bucket_size(116198) == 341


def test_indices_unique_and_gowalla_divisor():
  n, b = 70839, 1000
  ids = jnp.arange(n)
  r, q = E.cerp_indices(ids, n, b)
  assert E.quotient_divisor(n, b) == 71
  assert int(q.max()) == 997  # rows 998, 999 of Q are never read
  pairs = np.asarray(q) * b + np.asarray(r)
  assert len(np.unique(pairs)) == n
  np.testing.assert_array_equal(r, np.arange(n) % 1000)


def test_collision_refused_with_smallest_b():
  with pytest.raises(E.BucketSizeError, match="smallest valid b is 267"):
    E.CERPEmbedding(num_entities=70839, bucket_size=266, features=4)
  E.CERPEmbedding(num_entities=70839, bucket_size=267, features=4)  # fine


def test_collision_really_happens_below_bound():
  n, b = 100, 9  # c = 12 > 9
  r, q = E.cerp_indices(jnp.arange(n), n, b)
  assert len(set(zip(np.asarray(q).tolist(), np.asarray(r).tolist()))) < n


def test_soft_threshold_values():
  w = jnp.array([-0.5, -0.1, 0.0, 0.05, 0.3])
  s = jnp.zeros(5)  # sigmoid(0) = 0.5 → everything with |w| ≤ 0.5 is pruned
  np.testing.assert_array_equal(E.soft_threshold(w, s), np.zeros(5))
  s = jnp.full(5, jnp.log(0.1 / 0.9))  # sigmoid = 0.1
  np.testing.assert_allclose(E.soft_threshold(w, s), [-0.4, 0.0, 0.0, 0.0, 0.2], atol=1e-6)


def test_soft_threshold_gradients():
  w = jnp.array([0.3, -0.3, 0.05])
  s = jnp.full(3, -1.0)  # sigmoid(-1) ≈ 0.269
  gw = jax.grad(lambda w: E.soft_threshold(w, s).sum())(w)
  gs = jax.grad(lambda s: E.soft_threshold(w, s).sum())(s)
  sig = jax.nn.sigmoid(-1.0)
  np.testing.assert_allclose(gw, [1.0, 1.0, 0.0])
  np.testing.assert_allclose(gs, [-sig * (1 - sig), sig * (1 - sig), 0.0], rtol=1e-6)
  # at the original init −100 the loss gradient to the thresholds underflows to 0
  g100 = jax.grad(lambda s: E.soft_threshold(w, s).sum())(jnp.full(3, -100.0))
  np.testing.assert_array_equal(g100, np.zeros(3))


def test_cerp_module_prune_and_compose():
  m = E.CERPEmbedding(num_entities=20, bucket_size=5, features=3)
  v = m.init(jax.random.key(0), jnp.arange(4))
  p = v["params"]
  assert set(p) == {"P", "Q", "S_P", "S_Q"}
  assert p["P"].shape == (5, 3) and p["S_P"].shape == (5, 3)
  np.testing.assert_array_equal(p["S_P"], np.full((5, 3), -100.0))
  a = np.sqrt(6 / (5 + 3))
  assert np.abs(p["P"]).max() <= a
  out = m.apply(v, jnp.array([0, 7, 19]))
  # c = ceil(20/5) = 4: id 7 → r = 2, q = 1; id 19 → r = 4, q = 4
  np.testing.assert_allclose(out[1], p["P"][2] + p["Q"][1], rtol=1e-6)
  np.testing.assert_allclose(out[2], p["P"][4] + p["Q"][4], rtol=1e-6)
  assert m.num_parameters() == 30


def test_cerp_concat_and_global():
  m = E.CERPEmbedding(num_entities=20, bucket_size=5, features=3, combine="concat",
                      threshold_type="global")
  v = m.init(jax.random.key(0), jnp.arange(4))
  assert v["params"]["S_P"].shape == (1, 1)
  out = m.apply(v, jnp.array([7]))
  assert out.shape == (1, 6)


def test_cerp_retrain_mode_masks_and_gradients():
  m = E.CERPEmbedding(num_entities=20, bucket_size=5, features=3, mode=E.RETRAIN)
  v = m.init(jax.random.key(0), jnp.arange(4))
  assert set(v["params"]) == {"P", "Q"}
  mask = np.ones((5, 3), np.float32)
  mask[2, 1] = 0
  v["masks"] = {"P": jnp.asarray(mask), "Q": jnp.ones((5, 3))}
  t = m.apply(v, method=m.tables)
  assert float(t["P"][2, 1]) == 0.0
  g = jax.grad(lambda p: m.apply({"params": p, "masks": v["masks"]}, jnp.arange(20)).sum())(
      v["params"])
  assert float(g["P"][2, 1]) == 0.0 and float(g["P"][2, 0]) != 0.0


def test_full_embedding():
  m = E.FullEmbedding(num_entities=7, features=4)
  v = m.init(jax.random.key(1), jnp.arange(2))
  assert v["params"]["E"].shape == (7, 4)
  np.testing.assert_array_equal(m.apply(v, jnp.array([3])), v["params"]["E"][3:4])
  assert m.num_parameters() == 28


def test_count_nonzeros():
  t = {"P": jnp.array([[0.0, 1.0], [2.0, 0.0]]), "Q": jnp.zeros((2, 2))}
  assert int(E.count_nonzeros(t)) == 2


def test_fast_preset_threshold_init():
  from configs import gowalla_mf
  assert E.resolved_threshold_init(gowalla_mf.get_config()) == -100.0
  c = gowalla_mf.get_config("fast")
  p = 0.0075 * np.sqrt(6 / (1000 + 128))
  np.testing.assert_allclose(E.resolved_threshold_init(c), np.log(p / (1 - p)))
  assert -8 < E.resolved_threshold_init(c) < -7  # where the faithful run starts to prune
  m = models.make_embedding(c, 70839, E.PRUNE)
  assert m.threshold_init == E.resolved_threshold_init(c)


def test_threshold_multiplier_from_schedule_collection():
  """``gk`` (the threshold multiplier) is 1 unless the train step supplies a 'schedule'."""
  m = E.CERPEmbedding(num_entities=50, bucket_size=8, features=4, threshold_init=-1.0)
  v = m.init(jax.random.key(0), jnp.array([0]))
  p, s = v["params"]["P"], v["params"]["S_P"]
  plain = m.apply(v, method=E.CERPEmbedding.tables)
  np.testing.assert_array_equal(plain["P"], E.soft_threshold(p, s))
  ramped = m.apply({**v, E.SCHEDULE: {"gk": jnp.float32(2.0)}}, method=E.CERPEmbedding.tables)
  np.testing.assert_array_equal(ramped["P"], E.soft_threshold(p, s, 2.0))
  # a doubled threshold prunes a superset: σ(−1) ≈ 0.27 against the Xavier bound ≈ 0.82
  assert np.all((np.asarray(ramped["P"]) != 0) <= (np.asarray(plain["P"]) != 0))
  assert np.count_nonzero(ramped["P"]) < np.count_nonzero(plain["P"])
