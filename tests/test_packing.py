import numpy as np
import pytest

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


def test_corrupt_file_clear_error(tmp_path):
  blob, _ = P.pack({"P": _table(10, 8, 0.5)})
  (tmp_path / "bad.cerp").write_bytes(b"garbage!" + blob[8:])
  with pytest.raises(ValueError, match="bad.cerp: not a packed-table file"):
    P.unpack(tmp_path / "bad.cerp")
  (tmp_path / "short.cerp").write_bytes(blob[:-10])
  with pytest.raises(ValueError, match="truncated"):
    P.unpack(tmp_path / "short.cerp")
