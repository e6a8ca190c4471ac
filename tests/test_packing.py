"""The .cerp format: layouts, the self-describing meta, value dtypes, and damaged files (one clear
error each, no large allocation), plus eval.py's packed/ swap under a kill at every step."""

import json
import os
import shutil
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from cerp_jax import cli
from cerp_jax import packing as P


def _table(rows, cols, density, seed=0):
  rng = np.random.default_rng(seed)
  t = rng.standard_normal((rows, cols)).astype(np.float32)
  t[rng.random((rows, cols)) >= density] = 0
  return t


@pytest.mark.parametrize("layout", P.LAYOUTS)
@pytest.mark.parametrize("density", [0.0, 0.05, 0.5, 1.0])
def test_round_trip_each_layout(layout, density):
  t = _table(37, 130, density)
  np.testing.assert_array_equal(P.decode_table(P.encode_table(t, layout)), t)


def test_pack_unpack_and_choice(tmp_path):
  tables = {"P": _table(1000, 128, 0.05), "Q": _table(1000, 128, 0.6), "E": _table(10, 4, 1.0)}
  blob, rep = P.pack(tables)
  assert rep["tables"]["P"]["layout"] == "csr"
  assert rep["tables"]["Q"]["layout"] == "bitmap"
  assert rep["tables"]["E"]["layout"] == "dense"
  for name, r in rep["tables"].items():
    assert r[f"bytes_{r['layout']}"] == min(r[f"bytes_{l}"] for l in P.LAYOUTS)
  size = P.write(tmp_path / "x.cerp", blob)
  assert size == len(blob) == rep["packed_bytes"]
  back = P.unpack(tmp_path / "x.cerp")
  for k in tables:
    np.testing.assert_array_equal(back[k], tables[k])


def test_index_dtypes_smallest():
  arrs = P.encode_table(_table(1000, 128, 0.1), "csr")
  assert arrs["indices"].dtype == np.uint8
  assert arrs["indptr"].dtype == np.uint16
  arrs = P.encode_table(_table(1000, 300, 0.5), "csr")
  assert arrs["indices"].dtype == np.uint16 and arrs["indptr"].dtype == np.uint32


def test_serialized_size_close_to_ideal():
  for density in (0.02, 0.2, 0.5):
    t = {"P": _table(1000, 128, density, 1), "Q": _table(1000, 128, density, 2)}
    _, rep = P.pack(t)
    ideal = sum(P.ideal_bytes(r["nonzeros"], *r["shape"]) for r in rep["tables"].values())
    assert rep["packed_bytes"] / ideal <= 1.05


def test_full_table_bytes():
  assert P.full_table_bytes(70839, 128) == 70839 * 128 * 4 + 16




# --------------------------------------------------------------------------------------------------
# The meta: what inference needs, round-tripped
# --------------------------------------------------------------------------------------------------

U, I = 100, 150  # N = 250: ceil(250/16) = 16 ≤ b = 16 (configs/test.py)


def _config(embedding, **model):
  from configs import test as test_cfg
  c = test_cfg.get_config()
  c.model.embedding = embedding
  for k, v in model.items():
    c.model[k] = v
  return c


CONFIGS = {
    "cerp": _config("cerp", combine="concat", backbone="lightgcn", dim=64),
    "qr": _config("qr", bucket_size=40, qr_operation="add", backbone="mlp"),
    "hash": _config("hash", hash_rows=37, hash_num_hashes=3, hash_seed=12345),
    "full": _config("full", dim=5),
    "pep": _config("pep"),
}


def _tables_for(meta, density=0.3, seed=0):
  return {k: _table(r, c, density, seed + i) for i, (k, (r, c)) in enumerate(
      meta.table_shapes().items())}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_header_fields_round_trip(tmp_path, method):
  meta = P.PackedMeta.from_config(CONFIGS[method], U, I)
  mc = CONFIGS[method].model
  assert (meta.method, meta.backbone, meta.dim, meta.value_dtype) == (
      method, mc.backbone, mc.dim, "float32")
  assert (meta.num_users, meta.num_items, meta.item_offset, meta.num_entities) == (U, I, U, U + I)
  want_layout = {"cerp": (16, 16, 0, 0, "concat"), "qr": (40, 40, 0, 0, "add"),
                 "hash": (37, 0, 3, 12345, "sum"), "full": (0, 0, 0, 0, ""), "pep": (0, 0, 0, 0, "")}
  assert (meta.bucket_size, meta.quotient_divisor, meta.num_hashes, meta.hash_seed,
          meta.combine) == want_layout[method]
  tables = _tables_for(meta)
  blob, rep = P.pack(tables, meta)
  assert rep["meta"] == meta.to_dict()
  P.write(tmp_path / "m.cerp", blob)
  assert P.read_header(tmp_path / "m.cerp") == meta
  back, meta_back = P.unpack(tmp_path / "m.cerp", with_meta=True)
  assert meta_back == meta and list(back) == list(tables)
  for k in tables:
    np.testing.assert_array_equal(back[k], tables[k])


def test_stored_layout_readable_without_densifying():
  meta = P.PackedMeta.from_config(CONFIGS["cerp"], U, I)
  tables = {"P": _table(16, 64, 0.02, 1), "Q": _table(16, 64, 0.5, 2)}
  blob, rep = P.pack(tables, meta)
  f = P.load(blob)
  assert f.file_bytes == len(blob) and f.meta == meta
  for name, t in f.tables.items():
    assert t.layout == rep["tables"][name]["layout"] and t.shape == tables[name].shape
    want = P.encode_table(tables[name], t.layout)
    assert sorted(t.arrays) == sorted(want) and t.nonzeros == want["values"].size
    for part, arr in want.items():
      assert t.arrays[part].dtype == arr.dtype
      np.testing.assert_array_equal(t.arrays[part], arr)
    np.testing.assert_array_equal(t.dense(), tables[name])
  assert {t.layout for t in f.tables.values()} == {"csr", "bitmap"}


@pytest.mark.parametrize("field,value,match", [
    ("method", "dhe", "meta.method"), ("backbone", "bert", "meta.backbone"),
    ("combine", "mult", "meta.combine"), ("value_dtype", "float64", "meta.value_dtype"),
    ("item_offset", 0, "meta.item_offset"), ("dim", 0, "meta.dim"),
    ("bucket_size", 15, "meta.quotient_divisor"), ("quotient_divisor", 17, "meta.quotient_divisor"),
    ("num_hashes", 2, "meta.num_hashes"), ("num_users", -1, "meta.num_users"),
])
def test_pack_refuses_a_bad_meta(field, value, match):
  meta = P.PackedMeta.from_config(CONFIGS["cerp"], U, I)
  bad = P.PackedMeta(**{**meta.to_dict(), field: value})
  with pytest.raises(P.PackedFileError, match=match):
    P.pack(_tables_for(meta), bad)


def test_pack_refuses_tables_that_do_not_fit_the_meta():
  meta = P.PackedMeta.from_config(CONFIGS["cerp"], U, I)
  with pytest.raises(P.PackedFileError, match="tables"):
    P.pack({"P": _table(16, 64, 0.5), "Q": _table(15, 64, 0.5)}, meta)
  with pytest.raises(ValueError, match="from_config|meta.bucket_size|collide"):
    P.PackedMeta.from_config(_config("cerp", bucket_size=10), U, I)


# --------------------------------------------------------------------------------------------------
# Value dtypes: float16 and symmetric per-row int8
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", P.LAYOUTS)
@pytest.mark.parametrize("density", [0.0, 0.1, 1.0])
def test_int8_round_trip_error_bound(layout, density):
  t = _table(37, 130, density, 4) * 3
  t[5] = 0  # an all-zero row (scale 0)
  arrs = P.encode_table(t, layout, "int8")
  assert arrs["values"].dtype == np.int8 and arrs["scales"].dtype == np.float32
  back = P.decode_table(arrs)
  scale = np.abs(t).max(axis=1) / 127
  assert np.all(np.abs(back - t) <= scale[:, None] / 2 * (1 + 1e-5) + 1e-12)
  assert np.all(back[t == 0] == 0)
  np.testing.assert_array_equal(back[5], 0)
  # each row's largest entry is exact up to float32 rounding
  r = np.abs(t).argmax(axis=1)
  np.testing.assert_allclose(back[np.arange(37), r], t[np.arange(37), r], rtol=1e-6)


@pytest.mark.parametrize("layout", P.LAYOUTS)
def test_float16_round_trip_error_bound(layout):
  t = _table(37, 130, 0.3, 5) * np.float32(100)
  back = P.decode_table(P.encode_table(t, layout, "float16"))
  assert np.all(np.abs(back - t) <= np.abs(t) * 2.0 ** -11 + 2.0 ** -25)
  assert np.all(back[t == 0] == 0)
  with pytest.raises(ValueError, match="float16's range"):
    P.encode_table(t * 1000, layout, "float16")


@pytest.mark.parametrize("value_dtype", ["float16", "int8"])
def test_quantized_files_round_trip_and_are_smaller(value_dtype):
  meta32 = P.PackedMeta.from_config(CONFIGS["cerp"], U, I)
  meta = P.PackedMeta.from_config(CONFIGS["cerp"], U, I, value_dtype=value_dtype)
  tables = {"P": _table(16, 64, 0.9, 1), "Q": _table(16, 64, 0.9, 2)}
  blob, rep = P.pack(tables, meta)
  back, meta_back = P.unpack(blob, with_meta=True)
  assert meta_back.value_dtype == value_dtype and len(blob) < P.pack(tables, meta32)[1][
      "packed_bytes"]
  for k in tables:
    want = P.decode_table(P.encode_table(tables[k], rep["tables"][k]["layout"], value_dtype))
    np.testing.assert_array_equal(back[k], want)


# --------------------------------------------------------------------------------------------------
# Damaged files: one PackedFileError naming the file and the field, no large allocation
# --------------------------------------------------------------------------------------------------

_PREFIX = struct.Struct("<8sIQI")  # magic, directory bytes, payload bytes, CRC-32 (written out here
_META = 104                        # on purpose: the test restates the format)


def _split(blob):
  _, head_len, payload_len, _ = _PREFIX.unpack_from(blob)
  meta = blob[24:24 + _META]
  head = blob[24 + _META:24 + _META + head_len]
  return meta, head, blob[24 + _META + head_len:]


def _assemble(meta, head, payload, magic=P.MAGIC):
  """A file with consistent lengths and a correct CRC-32 (so the structural checks are reached)."""
  pre = _PREFIX.pack(magic, len(head), len(payload), 0)[:20]
  crc = zlib.crc32(pre + meta + head + payload)
  return _PREFIX.pack(magic, len(head), len(payload), crc) + meta + head + payload


def _sample_files():
  """A CERP file (P as CSR, Q as bitmap) and a full-table file (E dense)."""
  cerp = P.PackedMeta.from_config(CONFIGS["cerp"], U, I)
  full = P.PackedMeta.from_config(CONFIGS["full"], U, I)
  b1, r1 = P.pack({"P": _table(16, 64, 0.02, 1), "Q": _table(16, 64, 0.5, 2)}, cerp)
  b2, r2 = P.pack(_tables_for(full, 1.0), full)
  assert [r1["tables"][k]["layout"] for k in "PQ"] == ["csr", "bitmap"]
  assert r2["tables"]["E"]["layout"] == "dense"
  return {"cerp": b1, "full": b2}


def _edit_dir(blob, fn):
  meta, head, payload = _split(blob)
  d = json.loads(head)
  fn(d)
  return _assemble(meta, json.dumps(d, separators=(",", ":")).encode(), payload)


def _edit_meta(blob, **fields):
  meta, head, payload = _split(blob)
  m = P.PackedMeta.decode(meta, "x").to_dict()
  m.update(fields)
  vals = [v.encode() if isinstance(v, str) else v for v in m.values()]
  return _assemble(struct.pack("<8s16s8s8s8Q", *vals), head, payload)


def _edit_raw_meta(blob, offset, data):
  meta, head, payload = _split(blob)
  meta = meta[:offset] + data + meta[offset + len(data):]
  return _assemble(meta, head, payload)


def _entry(d, name):
  return next(e for e in d if e[0] == name)


def _edit_payload_array(blob, name, fn):
  """Rewrites one payload array in place (same byte length), CRC recomputed."""
  meta, head, payload = _split(blob)
  d = json.loads(head)
  _, dt, (n,), off = _entry(d, name)
  a = np.frombuffer(payload, "<" + dt, n, off).copy()
  a = fn(a).astype(a.dtype)
  raw = a.tobytes()
  return _assemble(meta, head, payload[:off] + raw + payload[off + len(raw):])


def _set(entry_name, idx, value):
  return lambda d: _entry(d, entry_name).__setitem__(idx, value)


def _header_cases():
  """(id, file, field the error must name) for edits of a well-formed, correctly checksummed file."""
  f = _sample_files()
  c, e = f["cerp"], f["full"]
  meta, head, payload = _split(c)
  cases = [
      # directory: dtypes, lengths, offsets, names, structure
      ("dtype values f4→f8", _edit_dir(c, _set("P/values", 1, "f8")), "P/values"),
      ("dtype values f4→i4", _edit_dir(e, _set("E/values", 1, "i4")), "E/values"),
      ("dtype indices u1→u2", _edit_dir(c, _set("P/indices", 1, "u2")), "(P/indptr): offset"),
      ("dtype shape i8→f8", _edit_dir(c, _set("Q/shape", 1, "f8")), "Q/shape"),
      ("dtype object", _edit_dir(c, _set("Q/bitmap", 1, "O")), "Q/bitmap"),
      ("dtype unicode", _edit_dir(c, _set("Q/bitmap", 1, "U9")), "Q/bitmap"),
      ("dtype not a string", _edit_dir(c, _set("Q/bitmap", 1, 4)), "directory["),
      ("offset negative", _edit_dir(c, _set("P/values", 3, -8)), "P/values"),
      ("offset +1", _edit_dir(c, _set("Q/values", 3, _entry(json.loads(_split(c)[1]), "Q/values")[3]
                                      + 1)), "Q/values"),
      ("offset 2**70", _edit_dir(c, _set("Q/bitmap", 3, 2 ** 70)), "Q/bitmap"),
      ("offset float", _edit_dir(c, _set("Q/bitmap", 3, 1.5)), "directory["),
      ("length 2**62", _edit_dir(c, _set("Q/values", 2, [2 ** 62])), "Q/values"),
      ("length negative", _edit_dir(c, _set("Q/values", 2, [-1])), "Q/values"),
      ("length 2-D", _edit_dir(c, _set("Q/values", 2, [64, 2])), "directory["),
      ("length bool", _edit_dir(c, _set("Q/shape", 2, [True])), "directory["),
      ("name without part", _edit_dir(c, _set("Q/bitmap", 0, "Qbitmap")), "Qbitmap"),
      ("unknown part", _edit_dir(c, _set("Q/bitmap", 0, "Q/weights")), "Q/weights"),
      ("duplicate part", _edit_dir(c, _set("Q/bitmap", 0, "Q/values")), "Q/values"),
      ("table renamed", _edit_dir(e, lambda d: [x.__setitem__(0, "F" + x[0][1:]) for x in d]),
       "tables"),
      ("entry dropped", _edit_dir(c, lambda d: d.pop()), "directory"),
      ("entry too short", _edit_dir(c, lambda d: d[0].pop()), "directory[0]"),
      ("directory an object", _assemble(meta, b'{"P/shape":1}', payload), "directory"),
      ("directory not JSON", _assemble(meta, head[:-1] + b"}", payload), "directory"),
      ("directory not UTF-8", _assemble(meta, b"\xff" + head[1:], payload), "directory"),
      ("directory nested 10^5", _assemble(meta, b"[" * 100_000 + b"]" * 100_000, payload),
       "directory"),
      # payload arrays (the shape, CSR and bitmap structure)
      ("shape swapped", _edit_payload_array(c, "P/shape", lambda a: a[::-1]), "table P"),
      ("shape 2,000,000 × 64 (dense)", _edit_payload_array(e, "E/shape",
                                                           lambda a: np.array([2_000_000, 64])),
       "table E"),
      ("shape 2,000,000 × 64 (csr)", _edit_payload_array(c, "P/shape",
                                                         lambda a: np.array([2_000_000, 64])),
       "table P"),
      ("shape 2**40 × 2**20 (bitmap)", _edit_payload_array(c, "Q/shape",
                                                           lambda a: np.array([2 ** 40, 2 ** 20])),
       "table Q"),
      ("shape negative", _edit_payload_array(c, "Q/shape", lambda a: np.array([-16, -8])),
       "table Q"),
      ("shape product-preserving (dense)", _edit_payload_array(e, "E/shape", lambda a: a[::-1]),
       "table E"),
      ("indptr decreasing", _edit_payload_array(c, "P/indptr", lambda a: a[::-1]), "table P"),
      ("indptr last ≠ nnz", _edit_payload_array(c, "P/indptr", lambda a: a + 1), "table P"),
      ("column index ≥ cols", _edit_payload_array(c, "P/indices", lambda a: a + 200), "table P"),
      ("bitmap popcount", _edit_payload_array(c, "Q/bitmap", lambda a: a | 0xFF), "table Q"),
      # meta (checksummed again, so the field checks answer)
      ("meta method", _edit_meta(c, method="dhe"), "meta.method"),
      ("meta backbone", _edit_meta(c, backbone="bert"), "meta.backbone"),
      ("meta value_dtype", _edit_meta(c, value_dtype="float64"), "meta.value_dtype"),
      ("meta value_dtype int8 (no scales)", _edit_meta(c, value_dtype="int8"), "values"),
      ("meta combine", _edit_meta(c, combine="mult"), "meta.combine"),
      ("meta dim 0", _edit_meta(c, dim=0), "meta.dim"),
      ("meta dim 2**40", _edit_meta(c, dim=2 ** 40), "meta.dim"),
      ("meta dim 65 (≠ tables)", _edit_meta(c, dim=65), "table P"),
      ("meta num_users 2**60", _edit_meta(c, num_users=2 ** 60, item_offset=2 ** 60),
       "meta.quotient_divisor"),
      ("meta num_items 0", _edit_meta(c, num_items=0), "meta.num_items"),
      ("meta item_offset", _edit_meta(c, item_offset=0), "meta.item_offset"),
      ("meta bucket_size 0", _edit_meta(c, bucket_size=0), "meta.bucket_size"),
      ("meta quotient_divisor", _edit_meta(c, quotient_divisor=15), "meta.quotient_divisor"),
      ("meta hash seed on cerp", _edit_meta(c, hash_seed=7), "meta.hash_seed"),
      ("meta method full→pep", _edit_meta(e, method="pep"), None),  # same layout: valid file
      ("meta method cerp→raw", _edit_meta(c, method="raw"), "meta.combine"),
      ("meta non-ASCII", _edit_raw_meta(c, 0, b"\xffcerp"), "meta.method"),
      ("meta NUL inside", _edit_raw_meta(c, 8, b"m\0f"), "meta.backbone"),
      # versions
      ("version 01", _assemble(meta, head, payload, b"CERPPK01"), "version"),
      ("version 99", _assemble(meta, head, payload, b"CERPPK99"), "version"),
      ("trailing byte", c + b"\0", "size"),
      ("empty file", b"", "size"),
      ("not a .cerp (npz)", b"PK\x03\x04" + b"\0" * 200, "magic"),
  ]
  return [x for x in cases if x[2] is not None]


HEADER_CASES = _header_cases()


def _load_checked(path):
  """Loads a damaged file; returns the error message, asserting one clean error and no large
  allocation."""
  tracemalloc.start()
  try:
    with pytest.raises(P.PackedFileError) as e:
      P.unpack(path)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  msg = str(e.value)
  assert isinstance(e.value, cli.expected_errors())
  assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
  assert peak < 2 ** 20 + 20 * os.path.getsize(path), (peak, msg)
  return msg


@pytest.mark.parametrize("case", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_damaged_file_structured_edits(tmp_path, case):
  _, blob, field = case
  path = tmp_path / "bad.cerp"
  path.write_bytes(blob)
  assert field in _load_checked(path)


@pytest.mark.parametrize("which", ["cerp", "full"])
def test_damaged_file_truncations_and_byte_flips(tmp_path, which):
  """Every truncation length and every byte flipped (one bit, and all eight) is refused: read from
  bytes (source '<bytes>', the same checks as a path) to keep the test fast, a sample from a path."""
  blob = _sample_files()[which]
  fields = {}
  cases = [("truncated", blob[:n]) for n in range(len(blob))]
  for i in range(len(blob)):
    for mask in (0x01, 0xFF):
      cases.append(("flip", blob[:i] + bytes([blob[i] ^ mask]) + blob[i + 1:]))
  for kind, bad in cases:
    try:
      P.unpack(bad)
    except P.PackedFileError as e:
      msg = str(e)
    else:
      raise AssertionError(f"{kind}: loaded silently")
    assert msg.startswith("<bytes>: ") and "\n" not in msg
    fields.setdefault(kind, set()).add(msg.split(": ")[1])
  assert fields["truncated"] == {"size"}
  assert fields["flip"] == {"magic", "version", "size", "checksum"}
  path = tmp_path / f"{which}.cerp"
  for n in (0, 7, 24, 127, 128, len(blob) // 2, len(blob) - 1):  # from a path, under the probe
    path.write_bytes(blob[:n])
    assert ": size: truncated" in _load_checked(path)
  for i in (0, 9, 21, 30, 200, len(blob) - 1):
    path.write_bytes(blob[:i] + bytes([blob[i] ^ 0x10]) + blob[i + 1:])
    _load_checked(path)


def test_damaged_file_reads_as_one_cli_error_line(tmp_path, capsys):
  blob = _sample_files()["cerp"]
  path = tmp_path / "run.cerp"
  for bad in (blob[:-3], blob[:200] + bytes([blob[200] ^ 4]) + blob[201:],
              _edit_dir(blob, _set("P/values", 1, "f8"))):
    path.write_bytes(bad)
    with pytest.raises(SystemExit) as e:
      cli.run_cli(P.unpack, path)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: "), err


def test_missing_file_and_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.cerp"):
    P.unpack(tmp_path / "nope.cerp")
  with pytest.raises(P.PackedFileError, match="dir.cerp: cannot read"):
    os.mkdir(tmp_path / "dir.cerp")
    P.unpack(tmp_path / "dir.cerp")


# --------------------------------------------------------------------------------------------------
# eval.py's packed/ swap: a kill at any step leaves the old or the new files, never neither
# --------------------------------------------------------------------------------------------------


class _Killed(BaseException):
  pass


def _workdir(tmp_path, with_old=True):
  wd = tmp_path / "wd"
  (wd / "packed.staging").mkdir(parents=True)
  for tag in ("0.25", "0.40"):
    (wd / "packed.staging" / f"{tag}.cerp").write_text("new")
  if with_old:
    (wd / "packed").mkdir()
    for tag in ("0.25", "0.40"):
      (wd / "packed" / f"{tag}.cerp").write_text("old")
    (wd / "eval.json").write_text("old")
  (wd / "eval.json.tmp").write_text("new")
  return wd


def _version(d):
  """'old' | 'new' when folder d holds one complete set, else None."""
  if not d.is_dir():
    return None
  got = {p.name: p.read_text() for p in d.iterdir()}
  if sorted(got) == ["0.25.cerp", "0.40.cerp"] and len(set(got.values())) == 1:
    return next(iter(got.values()))
  return None


@pytest.mark.parametrize("with_old", [True, False])
@pytest.mark.parametrize("kill_at", range(5))
def test_packed_swap_survives_a_kill_at_every_step(tmp_path, monkeypatch, with_old, kill_at):
  from cerp_jax import finalize
  wd = _workdir(tmp_path, with_old)
  calls = [0]
  real_replace, real_rmtree = os.replace, shutil.rmtree

  def counted(real):
    def fn(*a, **k):
      if calls[0] == kill_at:
        raise _Killed()
      calls[0] += 1
      return real(*a, **k)
    return fn

  monkeypatch.setattr(os, "replace", counted(real_replace))
  monkeypatch.setattr(shutil, "rmtree", counted(real_rmtree))
  try:
    finalize.swap_packed(str(wd), str(wd / "packed.staging"))
    killed = False
  except _Killed:
    killed = True
  monkeypatch.undo()
  assert killed == (kill_at < (4 if with_old else 3))
  # right after the kill: a complete old or new set is on disk
  have = {_version(wd / "packed"), _version(wd / "packed.old")} - {None}
  assert have or not with_old and kill_at == 0, sorted(os.listdir(wd))  # (first eval: no old)
  if _version(wd / "packed") is None and with_old:
    assert _version(wd / "packed.old") == "old"
  # the next eval.py start repairs it: packed/ and eval.json agree, nothing left aside
  finalize.recover_packed_swap(str(wd))
  assert not (wd / "packed.old").exists()
  final = _version(wd / "packed")
  if not with_old and kill_at == 0:  # a first eval killed before its first rename: still nothing
    assert final is None and not (wd / "eval.json").exists()
    return
  assert final in ("old", "new")
  if (wd / "eval.json").exists():
    assert (wd / "eval.json").read_text() == final
  else:
    assert not with_old
