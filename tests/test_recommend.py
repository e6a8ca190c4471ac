"""Serving top-K from the packed file (cerp_jax/recommend.py, recommend.py) vs the dense scorer."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from cerp_jax import data as D
from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import cli
from cerp_jax import models
from cerp_jax import packing as P
from cerp_jax import recommend as R
from conftest import REPO

K = 10


def _config(test_config, embedding, **model):
  c = test_config
  c.model.embedding = embedding
  for k, v in model.items():
    c.model[k] = v
  return c


# case → (method, config.model fields, stored density of each table).
CASES = {
    "cerp_sum": ("cerp", {}, 0.5),
    "cerp_concat_csr": ("cerp", {"combine": "concat", "dim": 64}, 0.02),
    "qr_mult": ("qr", {"bucket_size": 12, "qr_operation": "mult"}, 1.0),
    "qr_add": ("qr", {"bucket_size": 12, "qr_operation": "add"}, 0.6),
    "qr_concat": ("qr", {"bucket_size": 12, "qr_operation": "concat"}, 0.6),
    "hash": ("hash", {"hash_rows": 30, "hash_num_hashes": 2, "hash_seed": 7}, 1.0),
    "full": ("full", {}, 1.0),
    "pep": ("pep", {}, 0.1),
}


def _packed(config, data, density, seed=0, value_dtype="float32"):
  """(file bytes, tables as the file stores them) of random tables with the config's layout."""
  meta = P.PackedMeta.from_config(config, data.num_users, data.num_items, value_dtype)
  rng = np.random.default_rng(seed)
  tables = {}
  for name, shape in meta.table_shapes().items():
    t = rng.standard_normal(shape).astype(np.float32)
    t[rng.random(shape) >= density] = 0
    tables[name] = t
  blob, _ = P.pack(tables, meta)
  return blob, P.unpack(blob)


def _dense_top_k(config, data, tables, users, k):
  """The evaluator's top-K: the embedding's composed vectors, MF's score matrix, training items
  masked with −∞, ``jax.lax.top_k`` (cerp_jax.evaluation.batch_metrics)."""
  emb = models.make_embedding(config, data.num_entities, emb_lib.DENSE)
  params = {k_: jnp.asarray(v) for k_, v in tables.items()}
  vecs = emb.apply({"params": params}, method=lambda m: m.embed_all())
  scores = models.MF().score_matrix(vecs[np.asarray(users)], vecs[data.num_users:])
  er, ec = D.csr_rows(data.train, users)
  b = len(users)
  _, top = evaluation.batch_metrics(scores, er, ec, np.array([b], np.int32), np.zeros(1, np.int32),
                                    np.ones(b, np.int32), (k,))
  return np.asarray(top), np.asarray(scores)


@pytest.fixture
def data(test_config):
  return D.load_interactions(test_config)


@pytest.mark.parametrize("case", sorted(CASES))
def test_top_k_equals_the_dense_scorer_with_train_items_excluded(test_config, data, case):
  embedding, model, density = CASES[case]
  c = _config(test_config, embedding, **model)
  blob, tables = _packed(c, data, density)
  users = np.arange(data.num_users)
  want, scores = _dense_top_k(c, data, tables, users, K)
  got = R.recommend(blob, users, K, exclude=data.train)
  np.testing.assert_array_equal(got.items, want)
  np.testing.assert_allclose(got.scores, np.take_along_axis(scores, want, 1), rtol=1e-5, atol=1e-5)
  train = data.train.toarray().astype(bool)
  assert not train[users[:, None], got.items].any()  # no training item comes back
  # chunked scoring (7 items a chunk) and composing the items' vectors give the same lists
  for rec in (R.Recommender(blob, chunk_items=7), R.Recommender(blob, compose_items=True)):
    np.testing.assert_array_equal(rec.top_k(users, K, exclude=data.train).items, want)


def test_layouts_and_value_dtypes_are_served(test_config, data):
  c = _config(test_config, "cerp", dim=64)
  layouts = set()
  for density in (1.0, 0.5, 0.02):
    for value_dtype in ("float32", "float16", "int8"):
      blob, tables = _packed(c, data, density, seed=3, value_dtype=value_dtype)
      layouts |= {t.layout for t in P.load(blob).tables.values()}
      want, _ = _dense_top_k(c, data, tables, np.arange(20), K)
      np.testing.assert_array_equal(R.recommend(blob, range(20), K, data.train).items, want)
  assert layouts == set(P.LAYOUTS)


def test_exclusions_from_train_txt_and_the_tables_never_densified(test_config, data, synthetic_dir,
                                                                  monkeypatch):
  c = _config(test_config, "cerp")
  blob, tables = _packed(c, data, 0.5)
  want, _ = _dense_top_k(c, data, tables, [3, 17], K)
  monkeypatch.setattr(P, "decode_table", lambda *a: pytest.fail("a table was densified"))
  rec = R.Recommender(blob)
  got = rec.top_k([3, 17], K, exclude=synthetic_dir / "train.txt")
  np.testing.assert_array_equal(got.items, want)
  assert rec.resident_bytes < len(blob) + 16 * (data.num_entities + c.model.bucket_size * 2)


def test_out_of_range_user_refused(test_config, data):
  blob, _ = _packed(_config(test_config, "cerp"), data, 0.5)
  rec = R.Recommender(blob)
  for bad in (data.num_users, -1):
    want = rf"user {bad} is out of range: <bytes> has {data.num_users} users \(ids 0..59\)"
    with pytest.raises(ValueError, match=want):
      rec.top_k([0, bad])
  with pytest.raises(ValueError, match="integer user ids"):
    rec.top_k([1.5])


def test_fewer_items_left_than_k_pads(test_config, data):
  blob, _ = _packed(_config(test_config, "cerp"), data, 0.5)
  out = R.recommend(blob, [0], data.num_items + 5, exclude=data.train)
  left = data.num_items - data.train[0].nnz
  assert (out.items[0, :left] >= 0).all() and (out.items[0, left:] == -1).all()
  assert np.isneginf(out.scores[0, left:]).all() and len(out.as_dicts()[0]["items"]) == left


def test_exclusion_file_checked_against_the_packed_counts(test_config, data, tmp_path):
  blob, _ = _packed(_config(test_config, "cerp"), data, 0.5)
  bad = tmp_path / "train.txt"
  bad.write_text(f"0 1 2\n1 {data.num_items}\n")
  with pytest.raises(D.DataError, match=rf"train.txt:2: item {data.num_items} is out of range"):
    R.recommend(blob, [0], exclude=bad)


@pytest.mark.parametrize("backbone,needs", [("mlp", "weights the .cerp file does not store"),
                                            ("lightgcn", "propagated over the training graph")])
def test_backbones_that_are_not_dot_products_refused(test_config, data, backbone, needs):
  blob, _ = _packed(_config(test_config, "cerp", backbone=backbone), data, 0.5)
  with pytest.raises(R.ServingError, match=needs):
    R.Recommender(blob)


def _cli(*args):
  return subprocess.run([sys.executable, "recommend.py", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def test_cli_lines_json_and_one_line_errors(test_config, data, synthetic_dir, tmp_path):
  blob, _ = _packed(_config(test_config, "cerp"), data, 0.5)
  path = tmp_path / "m.cerp"
  P.write(path, blob)
  want = R.recommend(blob, [3, 17], 5, exclude=data.train).as_dicts()
  r = _cli(f"--packed={path}", "--users=3,17", "--k=5", f"--exclude={synthetic_dir / 'train.txt'}")
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines()[0] == "user 3: " + ", ".join(
      f"{i} ({s:.4g})" for i, s in zip(want[0]["items"], want[0]["scores"]))
  r = _cli(f"--packed={path}", "--users=3,17", "--k=5", "--json",
           f"--exclude={synthetic_dir / 'train.txt'}")
  assert [json.loads(l) for l in r.stdout.splitlines()] == want
  for args, msg in (((f"--packed={path}", f"--users=3,{data.num_users}"),
                     f"error: user {data.num_users} is out of range: {path} has"),
                    ((f"--packed={path}", "--users=3,x"), "error: --users=3,x: 'x' is not an")):
    r = _cli(*args)
    assert r.returncode == 2 and r.stderr.startswith(msg) and len(r.stderr.splitlines()) == 1, \
        r.stderr


def test_a_damaged_file_is_one_error_line(test_config, data, tmp_path, capsys):
  blob, _ = _packed(_config(test_config, "cerp"), data, 0.5)
  path = tmp_path / "bad.cerp"
  path.write_bytes(blob[:-3])
  with pytest.raises(SystemExit) as e:
    cli.run_cli(R.recommend, path, [3])
  err = capsys.readouterr().err.strip().splitlines()
  assert e.value.code == 2 and len(err) == 1
  assert err[0].startswith(f"error: {path}: size: truncated")
