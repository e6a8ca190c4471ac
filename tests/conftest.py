"""Shared fixtures: tiny synthetic LightGCN-format data and the test config."""

import os
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED_DATA = pathlib.Path(os.environ.get("CERP_DATA_DIR", REPO.parent / "shared" / "data"))


def write_lightgcn(directory, train, test, user_list=None, item_list=None):
  """Writes train.txt / test.txt from {user: [items]} dicts (and optional count files)."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  for name, rows in (("train.txt", train), ("test.txt", test)):
    with open(directory / name, "w") as f:
      for u, items in rows.items():
        f.write(" ".join(str(x) for x in [u, *items]) + "\n")
  for name, n in (("user_list.txt", user_list), ("item_list.txt", item_list)):
    if n is not None:
      with open(directory / name, "w") as f:
        f.write("org_id remap_id\n")
        for i in range(n):
          f.write(f"{1000 + i} {i}\n")
  return directory


def synthetic_interactions(num_users=60, num_items=80, seed=0):
  """Clustered preferences: user u likes the 20 items of cluster u % 4, plus some noise."""
  rng = np.random.default_rng(seed)
  train, test = {}, {}
  for u in range(num_users):
    c = u % 4
    items = rng.choice(np.arange(c * 20, c * 20 + 20), size=12, replace=False)
    extra = rng.choice(num_items, size=3, replace=False)
    its = np.unique(np.concatenate([items, extra]))
    rng.shuffle(its)
    train[u], test[u] = its[:-3].tolist(), its[-3:].tolist()
  return train, test


@pytest.fixture
def synthetic_dir(tmp_path):
  train, test = synthetic_interactions()
  return write_lightgcn(tmp_path / "syn", train, test)


@pytest.fixture
def test_config(synthetic_dir):
  from configs import test as test_cfg
  c = test_cfg.get_config()
  c.data.path = str(synthetic_dir)
  return c


def sparse_table(rows, cols, nnz, rng=np.random.default_rng(0)):
  """A ``[rows, cols]`` float32 table with exactly ``nnz`` non-zeros (values far from 0)."""
  t = np.zeros(rows * cols, np.float32)
  t[rng.choice(rows * cols, nnz, replace=False)] = rng.standard_normal(nnz).astype(np.float32) + 5
  return t.reshape(rows, cols)


def packed_len(tables: dict, meta=None) -> int:
  """Bytes of the file ``packing.pack`` writes for ``tables`` (checked against its own report)."""
  from cerp_jax import packing  # pylint: disable=g-import-not-at-top
  blob, rep = packing.pack(tables, meta)
  assert rep["packed_bytes"] == len(blob)
  return len(blob)
