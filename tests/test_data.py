import logging as py_logging
import tracemalloc

import numpy as np
import pytest

from cerp_jax import data as D
from conftest import SHARED_DATA, write_lightgcn


def _config(path, **kw):
  from configs import default
  c = default.get_config()
  c.data.path = str(path)
  c.data.name = "t"
  for k, v in kw.items():
    setattr(c.data, k, v)
  return c


def test_reads_lightgcn_with_empty_user_line(tmp_path):
  d = write_lightgcn(tmp_path, {0: [1, 2], 1: [], 2: [0]}, {0: [3], 1: [1], 2: [2]})
  p = D.read_lightgcn_file(d / "train.txt")
  assert p.users.tolist() == [0, 0, 2] and p.items.tolist() == [1, 2, 0]
  assert p.lines.tolist() == [1, 1, 3]
  data = D.load_interactions(_config(d, valid_fraction=0.0))
  assert (data.num_users, data.num_items) == (3, 4)
  assert data.train.nnz == 3 and data.test.nnz == 3 and data.valid.nnz == 0


def test_non_integer_token_names_file_line_value(tmp_path):
  (tmp_path / "train.txt").write_text("0 1 2\n1 3 x7\n")
  with pytest.raises(D.DataError, match=r"train.txt:2: non-integer token 'x7'"):
    D.read_lightgcn_file(tmp_path / "train.txt")


def test_negative_id(tmp_path):
  (tmp_path / "train.txt").write_text("0 1\n1 -3\n")
  with pytest.raises(D.DataError, match=r"train.txt:2: negative id -3"):
    D.read_lightgcn_file(tmp_path / "train.txt")


def test_empty_file_and_missing_file(tmp_path):
  (tmp_path / "train.txt").write_text("")
  with pytest.raises(D.DataError, match="train.txt: empty file"):
    D.read_lightgcn_file(tmp_path / "train.txt")
  with pytest.raises(D.DataError, match="file not found"):
    D.read_lightgcn_file(tmp_path / "nope.txt")


def test_empty_split(tmp_path):
  d = write_lightgcn(tmp_path, {0: [1], 1: [0]}, {0: [], 1: []})
  with pytest.raises(D.DataError, match="test.txt: no .user, item. pairs"):
    D.load_interactions(_config(d))


def test_id_beyond_item_list(tmp_path):
  d = write_lightgcn(tmp_path, {0: [1], 1: [5]}, {0: [2], 1: [0]}, user_list=2, item_list=5)
  with pytest.raises(D.DataError, match=r"train.txt:2: item id 5 out of range.*item_list.txt gives "
                     r"5 items"):
    D.load_interactions(_config(d))


def test_id_beyond_config_count(tmp_path):
  d = write_lightgcn(tmp_path, {0: [1], 3: [2]}, {0: [2], 1: [0]})
  with pytest.raises(D.DataError, match=r"train.txt:2: user id 3 out of range: the config gives 3"):
    D.load_interactions(_config(d, num_users=3))


def test_counts_from_lists_allow_unseen_entities(tmp_path):
  d = write_lightgcn(tmp_path, {0: [1], 1: [0]}, {0: [2], 1: [1, 2]}, user_list=4, item_list=6)
  data = D.load_interactions(_config(d, valid_fraction=0.0))
  assert (data.num_users, data.num_items) == (4, 6)
  assert "2 users and 4 items have no training interaction" in data.summary()


def test_duplicates_are_dropped_with_warning(tmp_path, caplog):
  d = write_lightgcn(tmp_path, {0: [1, 1, 2], 1: [0]}, {0: [3], 1: [2]})
  with caplog.at_level(py_logging.WARNING):
    data = D.load_interactions(_config(d, valid_fraction=0.0))
  assert data.train.nnz == 3
  assert "train.txt:1: duplicate (user 0, item 1)" in caplog.text


def test_train_test_overlap_is_an_error(tmp_path):
  d = write_lightgcn(tmp_path, {0: [1, 2], 1: [0]}, {0: [2], 1: [1]})
  with pytest.raises(D.DataError, match=r"test.txt:1: \(user 0, item 2\) is also in .*train.txt"):
    D.load_interactions(_config(d))


def test_validation_split_rules():
  import scipy.sparse as sp
  rng = np.random.default_rng(0)
  counts = [1, 2, 3, 10, 25]
  rows = [np.sort(rng.choice(50, n, replace=False)) for n in counts]
  m = sp.csr_matrix((np.ones(sum(counts), np.float32),
                     (np.repeat(np.arange(5), counts), np.concatenate(rows))), shape=(5, 50))
  kept, held = D.split_per_user(m, 0.1, seed=1, min_items=3)
  np.testing.assert_array_equal(np.diff(held.indptr), [0, 0, 1, 1, 3])  # round-half-up(0.1 n), ≥ 1
  assert (kept + held - m).nnz == 0 and kept.multiply(held).nnz == 0
  k2, h2 = D.split_per_user(m, 0.1, seed=1, min_items=3)
  assert (h2 - held).nnz == 0  # seeded
  _, h3 = D.split_per_user(m, 0.1, seed=2, min_items=3)
  assert (h3 - held).nnz != 0


def test_ml100k_reader_errors(tmp_path):
  (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t2\t3\n")
  with pytest.raises(D.DataError, match=r"u.data:2: expected 4 tab-separated fields"):
    D.read_movielens_100k(tmp_path / "u.data")
  (tmp_path / "u.data").write_text("0\t2\t3\t4\n")
  with pytest.raises(D.DataError, match=r"u.data:1: user id 0 < 1"):
    D.read_movielens_100k(tmp_path / "u.data")


@pytest.mark.skipif(not (SHARED_DATA / "movielens-100k" / "u.data").exists(), reason="no data")
def test_real_ml100k_split():
  from configs import ml100k_mf
  c = ml100k_mf.get_config()
  data = D.load_interactions(c)
  assert (data.num_users, data.num_items) == (943, 1682)
  assert data.train.nnz + data.valid.nnz + data.test.nnz == 100_000
  frac = data.test.nnz / 100_000
  assert 0.19 < frac < 0.21


@pytest.mark.skipif(not (SHARED_DATA / "gowalla" / "train.txt").exists(), reason="no data")
def test_real_gowalla_counts():
  from configs import gowalla_mf
  c = gowalla_mf.get_config()
  c.data.valid_fraction = 0.0
  data = D.load_interactions(c)
  assert (data.num_users, data.num_items) == (29858, 40981)
  assert data.train.nnz == 810_128 and data.test.nnz == 217_242  # the LightGCN/NGCF split


@pytest.mark.parametrize("train,lists,fmt,expected", [
    (b"0 1 2\n1 3\n2 1000000000000\n", {}, "lightgcn",
     r"train.txt:3: item id 1000000000000 looks like a typo: it would make 1000000000001 items"),
    (b"0 1 2\n1 3\n2 100000000\n", {}, "lightgcn",  # was accepted: 338 MiB of item arrays
     r"train.txt:3: item id 100000000 looks like a typo.*8 × 4 distinct item ids\) = 65536"),
    (b"0 1 2\n1000000000000 3\n2 1\n", {}, "lightgcn", r"train.txt:2: user id 1000000000000 looks"),
    (b"0 1 2\n1 3\n2 1000000000000\n", {"user_list": 3, "item_list": 4}, "lightgcn",
     r"train.txt:3: item id 1000000000000 out of range: .*item_list.txt gives 4 items"),
    (b"1\t1\t5\t0\n2\t2\t5\t0\n\n3\t1000000000000\t5\t0\n", {}, "ml100k",
     r"u.data:4: item id 1000000000000 looks like a typo"),
])
def test_id_far_beyond_the_counts_is_refused_unallocated(tmp_path, train, lists, fmt, expected):
  if fmt == "lightgcn":
    write_lightgcn(tmp_path, {}, {0: [3], 1: [1]}, **lists)
    (tmp_path / "train.txt").write_bytes(train)
  else:
    (tmp_path / "u.data").write_bytes(train)
  tracemalloc.start()  # numpy reports its buffers to tracemalloc
  try:
    with pytest.raises(D.DataError, match=expected):
      D.load_interactions(_config(tmp_path, format=fmt))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 16 * 2**20  # nothing sized by the bad id


def test_plausible_id_limit_floor(tmp_path):
  write_lightgcn(tmp_path, {0: [1, 65535], 1: [0]}, {0: [2], 1: [1]})
  assert D.load_interactions(_config(tmp_path, valid_fraction=0.0)).num_items == 65536
  write_lightgcn(tmp_path, {0: [1, 65536], 1: [0]}, {0: [2], 1: [1]})
  with pytest.raises(D.DataError, match=r"train.txt:1: item id 65536 looks like a typo"):
    D.load_interactions(_config(tmp_path))
  data = D.load_interactions(_config(tmp_path, valid_fraction=0.0, num_items=65537))
  assert data.num_items == 65537  # a count from the config allows it
  with pytest.raises(D.DataError, match=r"more than 2147483647 entities"):
    D.load_interactions(_config(tmp_path, num_items=2**31))


def test_non_utf8_bytes_name_file_and_line(tmp_path):
  write_lightgcn(tmp_path, {0: [1, 2]}, {0: [3], 1: [1]})
  (tmp_path / "train.txt").write_bytes(b"0 1 2\n1 \xff3\n")
  with pytest.raises(D.DataError, match=r"train.txt:2: b'\\xff3' is not UTF-8 text \(byte 0xff\)"):
    D.load_interactions(_config(tmp_path))
  (tmp_path / "u.data").write_bytes(b"1\t1\t5\t0\n\n2\t\xe92\t5\t0\n")
  with pytest.raises(D.DataError, match=r"u.data:3: b'\\xe92' is not UTF-8 text \(byte 0xe9\)"):
    D.read_movielens_100k(tmp_path / "u.data")
  (tmp_path / "u.data").write_bytes(b"1\t1\t5\t0\n2\t\xff\t5\n")  # wrong field count too
  with pytest.raises(D.DataError, match=r"u.data:2: b'2\\t\\xff\\t5' is not UTF-8 text"):
    D.read_movielens_100k(tmp_path / "u.data")


def test_list_files_are_counted_whatever_their_encoding(tmp_path):
  write_lightgcn(tmp_path, {0: [1], 1: [0]}, {0: [2], 1: [1]})
  (tmp_path / "item_list.txt").write_bytes(b"org_id remap_id\ncaf\xe9 0\nb 1\nc 2\nd 3\n")
  assert D.load_interactions(_config(tmp_path, valid_fraction=0.0)).num_items == 4


def test_ml100k_messages_show_file_lines_and_1_based_ids(tmp_path, caplog):
  (tmp_path / "u.data").write_bytes(b"1\t1\t5\t0\n\n\n2\t2\t5\t0\n3\t9\t5\t0\n")
  assert D.read_movielens_100k(tmp_path / "u.data").lines.tolist() == [1, 4, 5]
  with pytest.raises(D.DataError, match=r"u.data:5: item id 9 out of range: the config gives 5 "
                     r"items \(valid ids 1..5\)"):
    D.load_interactions(_config(tmp_path, format="ml100k", num_items=5))
  (tmp_path / "u.data").write_bytes(b"1\t1\t5\t0\n\n2\t2\t5\t0\n1\t2\t5\t0\n\n2\t2\t3\t9\n")
  with caplog.at_level(py_logging.WARNING):
    D.load_interactions(_config(tmp_path, format="ml100k"))
  assert "u.data:6: duplicate (user 2, item 2)" in caplog.text


def test_id_beyond_int64_is_one_error_line(tmp_path):
  """An id too long for int64 is refused naming file:line (not an OverflowError traceback)."""
  (tmp_path / "train.txt").write_text("0 1 2\n7 1 2 99999999999999999999\n")
  with pytest.raises(D.DataError, match=r"train.txt:2: id 99999999999999999999 is beyond"):
    D.read_lightgcn_file(str(tmp_path / "train.txt"))
