"""packing.packed_size: the closed-form size of pack()'s file, checked byte for byte against pack()
for every layout, value dtype and meta."""

import numpy as np
import pytest

from cerp_jax import packing as P
from conftest import packed_len, sparse_table

@pytest.mark.parametrize("value_dtype", list(P.VALUE_DTYPES))
@pytest.mark.parametrize("rows,cols,nnz", [
    (1, 1, 0), (1, 1, 1), (37, 130, 0), (37, 130, 5), (37, 130, 2000), (37, 130, 37 * 130),
    (1000, 128, 255), (1000, 128, 256), (1000, 128, 30_000), (1000, 128, 65_535),
    (1000, 128, 65_536), (1000, 128, 127_000), (1000, 128, 128_000), (10, 300, 2999),
    (3, 70_000, 10)])
def test_packed_size_exact_one_table(rows, cols, nnz, value_dtype):
  meta = P.PackedMeta(value_dtype=value_dtype)
  assert int(P.packed_size([("E", rows, cols, nnz)], value_dtype)) == packed_len(
      {"E": sparse_table(rows, cols, nnz)}, meta)


def test_packed_size_exact_random_two_tables_and_vectorised():
  rng = np.random.default_rng(3)
  for i in range(90):
    value_dtype = ("float32", "float16", "int8")[i % 3]
    specs = []
    for name in ("P", "Q"):
      r, c = int(rng.integers(1, 300)), int(rng.integers(1, 260))
      specs.append((name, r, c, int(rng.integers(0, r * c + 1))))
    tables = {n: sparse_table(r, c, z, rng) for n, r, c, z in specs}
    assert int(P.packed_size(specs, value_dtype)) == packed_len(
        tables, P.PackedMeta(value_dtype=value_dtype))
  # vectorised over non-zero counts = one call per count
  counts = np.array([0, 10, 500, 3000, 4000])
  vec = P.packed_size([("P", 40, 100, counts), ("Q", 40, 100, 4000 - counts)])
  for i, n in enumerate(counts):
    assert vec[i] == int(P.packed_size([("P", 40, 100, int(n)), ("Q", 40, 100, int(4000 - n))]))


def test_packed_size_does_not_depend_on_the_meta_values():
  """Prefix, checksum and meta take packing.FIXED_BYTES whatever they hold: the solver's constant."""
  tables = {"P": sparse_table(40, 64, 700), "Q": sparse_table(40, 64, 2000)}
  want = int(P.packed_size([("P", 40, 64, 700), ("Q", 40, 64, 2000)]))
  for u, backbone, combine in ((1, "mf", "sum"), (800, "lightgcn", "concat"), (1599, "mlp", "sum")):
    meta = P.PackedMeta("cerp", backbone, combine, "float32", u, 1600 - u, u, 64, 40, 40)
    assert packed_len(tables, meta) == want
  assert packed_len(tables) == want  # 'raw' (no id layout)
  assert P.FIXED_BYTES == 24 + 104


@pytest.mark.parametrize("value_dtype", list(P.VALUE_DTYPES))
def test_layout_sizes_are_the_sizes_pack_compares(value_dtype):
  nnz = [0, 3, 300, 2000, 37 * 130]
  sizes = P.layout_sizes(37, 130, np.array(nnz), value_dtype)
  assert sizes.shape == (len(P.LAYOUTS), len(nnz))
  for k, n in enumerate(nnz):
    _, rep = P.pack({"E": sparse_table(37, 130, n)}, P.PackedMeta(value_dtype=value_dtype))
    t = rep["tables"]["E"]
    assert [t[f"bytes_{l}"] for l in P.LAYOUTS] == sizes[:, k].tolist()
    assert P.LAYOUTS[int(P.chosen_layouts(37, 130, n, value_dtype))] == t["layout"]
