"""Tests for cerp_jax.tfds_builder: the TFDS (array_record) path must equal the plain text loader."""

import functools
import http.server
import pathlib
import socket
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cerp_jax import data
from cerp_jax import tfds_builder

SHARED_DATA = data.DEFAULT_DATA_ROOT

# Synthetic LightGCN folder: a user with no test item ("4 "), a blank line, repeated spaces, an id
# gap (no user 5), items up to 30.
TRAIN = ["0 1 2 3", "1 2 30 4", "2 0", "", "3 5  6 7", "4 8 9", "6 1 2 3 4 5 6"]
TEST = ["0 4", "1 5 6", "2 1", "3 8", "4 ", "6 7 8"]


def _write(folder: pathlib.Path, train=TRAIN, test=TEST, user_list=None, item_list=None):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "train.txt").write_text("\n".join(train) + "\n")
  (folder / "test.txt").write_text("\n".join(test) + "\n")
  if user_list is not None:
    (folder / "user_list.txt").write_text(
        "org_id remap_id\n" + "".join(f"u{k} {k}\n" for k in range(user_list)))
  if item_list is not None:
    (folder / "item_list.txt").write_text(
        "org_id remap_id\n" + "".join(f"i{k} {k}\n" for k in range(item_list)))
  return folder


def _assert_same(got, want):
  """Both are (train Pairs, test Pairs, num_users, num_items, source)."""
  for g, w in zip(got[:2], want[:2]):
    assert g.path == w.path
    assert g.num_lines == w.num_lines
    for field in ("users", "items", "lines"):
      a, b = getattr(g, field), getattr(w, field)
      assert a.dtype == np.int64 and a.shape == b.shape, field
      np.testing.assert_array_equal(a, b, err_msg=field)
  assert tuple(got[2:]) == tuple(want[2:])


@pytest.mark.parametrize("lists,num_users,num_items", [
    ((None, None), 0, 0),        # counts from max id + 1
    ((None, None), 12, 40),      # counts from the config
    ((9, 35), 12, 40),           # counts from user_list.txt / item_list.txt (beat the config)
])
def test_synthetic_matches_text_loader(tmp_path, lists, num_users, num_items):
  folder = _write(tmp_path / "synthetic", user_list=lists[0], item_list=lists[1])
  want = data.load_lightgcn(folder, "synthetic", num_users, num_items)
  got = tfds_builder.load_pairs(folder, "synthetic", tmp_path / "tfds", num_users, num_items)
  _assert_same(got, want)
  # Second call reuses the prepared dataset (and its metadata) and gives the same.
  _assert_same(tfds_builder.load_pairs(folder, "synthetic", tmp_path / "tfds", num_users,
                                       num_items), want)
  builder = tfds_builder.prepare(folder, "synthetic", tmp_path / "tfds")
  assert builder.builder_config.name.startswith("folder_synthetic_")
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  meta = builder.info.metadata
  assert (meta["num_users"], meta["num_items"]) == (lists[0] or 7, lists[1] or 31)
  assert "tensorflow" not in sys.modules  # no TF anywhere on the path


def _user_lines(lines):
  """(user, items, 1-based line) of each non-blank line of a synthetic file, by hand."""
  out = []
  for number, text in enumerate(lines, start=1):
    ids = [int(t) for t in text.split()]
    if ids:
      out.append((ids[0], ids[1:], number))
  return out


def test_tfds_data_source_one_example_per_user_line(tmp_path):
  """tfds.data_source (registered name, manual dir) works without TF: one example per user line."""
  folder = _write(tmp_path / "ml")
  for split, lines in (("train", TRAIN), ("test", TEST)):
    source = tfds.data_source(
        "lightgcn_interactions/ml1m_m1", split=split, data_dir=tmp_path / "tfds",
        download_and_prepare_kwargs=dict(
            download_config=tfds.download.DownloadConfig(manual_dir=str(folder))))
    examples = source.__getitems__(list(range(len(source))))
    assert sorted(examples[0]) == ["items", "line", "user"]
    got = [(int(e["user"]), e["items"].tolist(), int(e["line"])) for e in examples]
    assert got == _user_lines(lines)  # blank line dropped, "4 " kept with no items
    assert all(e["items"].dtype == np.int64 and e["items"].ndim == 1 for e in examples)
    assert [(int(e["user"]), int(e["line"])) for e in source] == [(u, l) for u, _, l in got]
  builder = tfds_builder.LightgcnInteractions(config="ml1m_m1", data_dir=tmp_path / "tfds")
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert builder.info.splits["train"].num_examples == 6  # 7 lines, one blank
  assert builder.info.splits["test"].num_examples == 6
  meta = builder.info.metadata
  assert (meta["train_num_pairs"], meta["test_num_pairs"]) == (18, 7)
  assert (meta["train_num_lines"], meta["test_num_lines"]) == (7, 6)
  head = tfds_builder.read_split(builder, "train[:2]")
  assert head.users.tolist() == [0, 1] and head.offsets.tolist() == [0, 3, 6]
  assert head.items.tolist() == [1, 2, 3, 2, 30, 4]
  assert "tensorflow" not in sys.modules


def _real_folder():
  folder = SHARED_DATA / "movielens-1m-m1"  # 6,022 user lines a split, ~0.9M interactions
  if not (folder / "train.txt").exists():
    pytest.skip(f"{folder} not available")
  return folder


def test_real_dataset_matches_text_loader(tmp_path):
  folder = _real_folder()
  want = data.load_lightgcn(folder, "ml1m_m1")
  got = tfds_builder.load_pairs(folder, "ml1m_m1", tmp_path / "tfds")
  _assert_same(got, want)
  assert got[0].users.size == 796_244 and got[1].users.size == 99_455
  builder = tfds_builder.prepare(folder, "ml1m_m1", tmp_path / "tfds")
  for split, pairs in zip(("train", "test"), got[:2]):  # one example per non-blank line
    assert builder.info.splits[split].num_examples == np.unique(pairs.lines).size


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_offline_download_fails_fast(tmp_path, monkeypatch):
  # Unreachable copy: a closed local port, so no traffic leaves the machine.
  monkeypatch.setattr(tfds_builder.GOWALLA, "url_root",
                      f"http://127.0.0.1:{_closed_port()}/gowalla/")
  empty = tmp_path / "gowalla"
  empty.mkdir()
  start = time.perf_counter()
  with pytest.raises(data.DataError) as err:
    tfds_builder.load_pairs(empty, "gowalla", tmp_path / "tfds")
  assert time.perf_counter() - start < 10
  assert isinstance(err.value, tfds_builder.DownloadError)
  message = str(err.value)
  assert message.startswith(f"gowalla (no train.txt in the manual dir {empty}): downloading "
                            "http://127.0.0.1")
  assert "failed" in message
  assert "manual dir" in message and "CERP_DATA_DIR" in message
  # The builder itself, pointed at the empty manual dir, and a missing folder take the same route.
  start = time.perf_counter()
  with pytest.raises(tfds_builder.DownloadError, match="CERP_DATA_DIR"):
    tfds_builder.LightgcnInteractions(config="gowalla", data_dir=tmp_path / "tfds").\
        download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(empty)))
  assert time.perf_counter() - start < 10
  with pytest.raises(tfds_builder.DownloadError):
    tfds_builder.load_pairs(tmp_path / "nowhere", "gowalla", tmp_path / "tfds")
  assert not tfds_builder.LightgcnInteractions(
      config="gowalla", data_dir=tmp_path / "tfds").is_prepared()


def test_silent_host_times_out(tmp_path, monkeypatch):
  """A host that accepts the connection but never answers: bounded by PROBE_TIMEOUT_S."""
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen(4)  # never accepts, never answers
    monkeypatch.setattr(tfds_builder, "PROBE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(tfds_builder.GOWALLA, "url_root",
                        f"http://127.0.0.1:{server.getsockname()[1]}/")
    start = time.perf_counter()
    with pytest.raises(tfds_builder.DownloadError, match="failed"):
      tfds_builder.load_pairs(tmp_path / "empty", "gowalla", tmp_path / "tfds")
    assert time.perf_counter() - start < 5


def test_download_from_local_server(tmp_path, monkeypatch):
  """The download path end to end, against a local HTTP server holding a LightGCN folder."""
  served = _write(tmp_path / "served" / "gowalla", user_list=8, item_list=31)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                              directory=str(served.parent))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  root = f"http://127.0.0.1:{server.server_address[1]}"
  try:
    monkeypatch.setattr(tfds_builder.GOWALLA, "url_root", f"{root}/no-such-folder/")
    with pytest.raises(tfds_builder.DownloadError, match="HTTP status 404"):
      tfds_builder.load_pairs(tmp_path / "empty", "gowalla", tmp_path / "tfds")
    monkeypatch.setattr(tfds_builder.GOWALLA, "url_root", f"{root}/gowalla/")
    got = tfds_builder.load_pairs(tmp_path / "empty", "gowalla", tmp_path / "tfds")
  finally:
    server.shutdown()
    server.server_close()
  want = data.load_lightgcn(served, "gowalla")
  for g, w in zip(got[:2], want[:2]):
    assert pathlib.Path(g.path).name == pathlib.Path(w.path).name
    assert g.num_lines == w.num_lines
    for field in ("users", "items", "lines"):
      np.testing.assert_array_equal(getattr(g, field), getattr(w, field))
  assert got[2:4] == (8, 31) and "user_list.txt" in str(got[4])
  # Prepared once: later calls read it without a server.
  assert tfds_builder.load_pairs(tmp_path / "empty", "gowalla", tmp_path / "tfds")[2:4] == (8, 31)


@pytest.mark.parametrize("train,test,expected", [
    (TRAIN[:1] + ["1 2 x 4"], TEST, r"train\.txt:2: non-integer token 'x'"),
    (TRAIN, TEST[:2] + ["2 -3"], r"test\.txt:3: negative id -3"),
    (TRAIN, ["", "  "], r"test\.txt: no \(user, item\) pairs \(empty split\)"),
])
def test_malformed_file_same_error(tmp_path, train, test, expected):
  folder = _write(tmp_path / "bad", train=train, test=test)
  with pytest.raises(data.DataError, match=expected) as plain:
    data.load_lightgcn(folder, "bad")
  with pytest.raises(data.DataError, match=expected) as through_tfds:
    tfds_builder.load_pairs(folder, "bad", tmp_path / "tfds")
  assert type(through_tfds.value) is type(plain.value)
  assert str(through_tfds.value) == str(plain.value)


def test_missing_file_same_error(tmp_path):
  folder = tmp_path / "missing"
  folder.mkdir()
  with pytest.raises(data.DataError) as plain:
    data.load_lightgcn(folder, "ml1m_m1")
  with pytest.raises(data.DataError) as through_tfds:
    tfds_builder.load_pairs(folder, "ml1m_m1", tmp_path / "tfds")
  assert str(through_tfds.value) == str(plain.value)
  assert "train.txt: file not found" in str(plain.value)


def test_changed_source_is_regenerated(tmp_path):
  folder = _write(tmp_path / "ml1m_m1")
  tfds_dir = tmp_path / "tfds"
  _assert_same(tfds_builder.load_pairs(folder, "ml1m_m1", tfds_dir),
               data.load_lightgcn(folder, "ml1m_m1"))
  _write(folder, train=TRAIN + ["9 40 41"])
  _assert_same(tfds_builder.load_pairs(folder, "ml1m_m1", tfds_dir),
               data.load_lightgcn(folder, "ml1m_m1"))


def test_malformed_new_source_keeps_old_copy(tmp_path):
  """A changed folder that fails validation: same DataError, the old prepared copy untouched."""
  folder = _write(tmp_path / "ml1m_m1")
  tfds_dir = tmp_path / "tfds"
  old = data.load_lightgcn(folder, "ml1m_m1")
  _assert_same(tfds_builder.load_pairs(folder, "ml1m_m1", tfds_dir), old)
  builder = tfds_builder.LightgcnInteractions(config="ml1m_m1", data_dir=tfds_dir)
  fingerprint = builder.info.metadata["source_sha256"]
  before = sorted(p.name for p in pathlib.Path(builder.data_dir).iterdir())

  _write(folder, train=TRAIN + ["9 40 x"])
  expected = r"train\.txt:8: non-integer token 'x'"
  with pytest.raises(data.DataError, match=expected) as plain:
    data.load_lightgcn(folder, "ml1m_m1")
  with pytest.raises(data.DataError, match=expected) as through_tfds:
    tfds_builder.load_pairs(folder, "ml1m_m1", tfds_dir)
  assert str(through_tfds.value) == str(plain.value)

  # The old copy is still there, complete, and reads back as the old files.
  builder = tfds_builder.LightgcnInteractions(config="ml1m_m1", data_dir=tfds_dir)
  assert builder.is_prepared() and builder.info.metadata["source_sha256"] == fingerprint
  assert sorted(p.name for p in pathlib.Path(builder.data_dir).iterdir()) == before
  assert not [p for p in pathlib.Path(builder.data_dir).parent.iterdir() if "incomplete" in p.name]
  for split, want in zip(("train", "test"), old[:2]):
    got = tfds_builder.read_split(builder, split).to_pairs()
    for field in ("users", "items", "lines"):
      np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
  # Put the old files back: the old copy is reused as is, nothing regenerated.
  _write(folder)
  stamp = pathlib.Path(builder.data_dir, "dataset_info.json").stat().st_mtime_ns
  _assert_same(tfds_builder.load_pairs(folder, "ml1m_m1", tfds_dir), old)
  assert pathlib.Path(builder.data_dir, "dataset_info.json").stat().st_mtime_ns == stamp


def test_config_for_names(tmp_path):
  assert tfds_builder.config_for("gowalla", tmp_path).name == "gowalla"
  assert tfds_builder.config_for("Amazon-Book-KGAT", tmp_path).name == "amazon_book_kgat"
  assert tfds_builder.config_for("", tmp_path / "movielens-1m-m1").name == "ml1m_m1"
  generic = tfds_builder.config_for("mine", tmp_path / "My Data")
  assert generic.name.startswith("folder_my_data_") and not generic.url_root
  assert tfds_builder.config_for("mine", tmp_path / "other").name != generic.name
