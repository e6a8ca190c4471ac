"""The ``.cerp`` packed-table file: what inference needs of an embedding, and nothing else.

Packed bytes are the serialized size of everything needed to rebuild the tables at inference —
values, indices/indptr or bitmap, shapes, the id layout — excluding thresholds.
:func:`packed_size` gives that size in closed form (the budget solver, :mod:`cerp_jax.budget`,
sizes every method with it). Each table is stored in the smallest of three layouts:

* ``dense``: values, row-major (no index overhead; wins when nothing is pruned);
* ``csr``: non-zero values, column indices in the smallest unsigned dtype that holds ``cols − 1``,
  row pointers in the smallest that holds ``nnz``;
* ``bitmap``: a row-major bit mask (``np.packbits``, ⌈rows·cols/8⌉ bytes) plus the non-zero values.

Values are float32 by default; ``value_dtype='float16'`` stores them as IEEE half floats, ``'int8'``
as symmetric per-row int8 (``scale_r = max_j |x_rj| / 127``, ``q = round(x / scale_r)``, a float32
``scales [rows]`` array per table; the error of an entry is at most ``scale_r / 2``). The support
(which entries are stored) is always the float32 table's non-zeros.

File layout, version 02 (all integers little-endian)::

  prefix     24 bytes   magic b"CERPPK02", uint32 directory bytes, uint64 payload bytes,
                        uint32 CRC-32 (zlib) of every other byte of the file
  meta      104 bytes   method 8s, backbone 16s, combine 8s, value_dtype 8s (ASCII, NUL-padded),
                        uint64 num_users, num_items, item_offset, dim, bucket_size,
                        quotient_divisor, num_hashes, hash_seed       (see :class:`PackedMeta`)
  directory             compact JSON ``[[name, dtype, [length], offset], ...]``, one entry per 1-D
                        array; ``name`` is ``<table>/<part>``; offsets are contiguous from 0
  payload               the raw arrays back to back

The fixed part (prefix + meta) is ``FIXED_BYTES`` = 128 bytes whatever the values, and a directory
entry costs ≈ 25 bytes plus its digits. The CRC-32 detects accidental damage (bit flips,
truncation, torn copies); it is not tamper-proofing. Readers check the file size, the checksum, the
meta, every directory entry and every table's structure (and its shape against the meta) before
allocating more than a few times the file's size; each failure is one :class:`PackedFileError`
naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import struct
import zlib
from typing import Dict, Optional, Sequence

import numpy as np

from cerp_jax import packed_meta

LAYOUTS = ("dense", "csr", "bitmap")
VERSION = "02"
MAGIC = b"CERPPK" + VERSION.encode()
_MAGIC_STEM = b"CERPPK"
_PREFIX = struct.Struct("<8sIQI")  # magic, directory bytes, payload bytes, CRC-32
FIXED_BYTES = _PREFIX.size + packed_meta.META_BYTES  # 128: prefix + meta, whatever the values

# The meta and its errors are part of this module's API (pack takes a PackedMeta, readers raise
# PackedFileError); they are defined in cerp_jax.packed_meta.
PackedMeta = packed_meta.PackedMeta
PackedFileError = packed_meta.PackedFileError
VALUE_DTYPES = packed_meta.VALUE_DTYPES  # value_dtype → stored dtype
INDEX_DTYPES = ("u1", "u2", "u4", "u8")
_PARTS = {"dense": ("shape", "values"), "csr": ("shape", "values", "indices", "indptr"),
          "bitmap": ("shape", "values", "bitmap")}
_MAX_FP16 = float(np.finfo(np.float16).max)


def _fail(source: str, field: str, problem: str):
  raise PackedFileError(f"{source}: {field}: {problem}")


# --------------------------------------------------------------------------------------------------
# Tables ⇄ arrays
# --------------------------------------------------------------------------------------------------


def _uint_dtype(max_value: int) -> np.dtype:
  for dt in (np.uint8, np.uint16, np.uint32, np.uint64):
    if max_value <= np.iinfo(dt).max:
      return np.dtype(dt)
  raise ValueError(max_value)


def quantize(table: np.ndarray, value_dtype: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Values of a ``[rows, cols]`` float32 table in a stored value dtype.

  Returns:
    (``[rows, cols]`` in ``VALUE_DTYPES[value_dtype]``, ``[rows]`` float32 scales for 'int8' else
    None). int8 is symmetric per row: ``scale = max|x_row| / 127`` (0 for an all-zero row),
    ``q = clip(round(x / scale), −127, 127)``; the error of an entry is at most ``scale / 2``.

  Raises:
    ValueError: unknown value dtype, or a value beyond float16's range (65504).
  """
  if value_dtype == "float32":
    return table, None
  if value_dtype == "float16":
    if table.size and float(np.max(np.abs(table))) > _MAX_FP16:
      raise ValueError(f"value_dtype='float16': |value| {float(np.max(np.abs(table))):g} exceeds "
                       f"float16's range ({_MAX_FP16:g}); use 'float32' or 'int8'")
    return table.astype(np.float16), None
  if value_dtype == "int8":
    scales = (np.max(np.abs(table), axis=1) / 127).astype(np.float32) if table.size else \
        np.zeros(table.shape[0], np.float32)
    safe = np.where(scales > 0, scales, 1)[:, None]
    q = np.clip(np.rint(table / safe), -127, 127).astype(np.int8)
    return q, scales
  raise ValueError(f"value_dtype={value_dtype!r}: expected one of {tuple(VALUE_DTYPES)}")


def encode_table(table: np.ndarray, layout: str,
                 value_dtype: str = "float32") -> Dict[str, np.ndarray]:
  """Arrays of one ``[rows, cols]`` float32 table in one layout (parts in ``_PARTS`` order, with
  ``scales [rows] float32`` after ``values`` for int8). The support is the table's non-zeros.

  Raises:
    ValueError: not 2-D, unknown layout or value dtype, float16 overflow.
  """
  table = np.asarray(table, np.float32)
  if table.ndim != 2:
    raise ValueError(f"expected a 2-D table, got shape {table.shape}")
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")
  rows, cols = table.shape
  stored, scales = quantize(table, value_dtype)
  out = {"shape": np.array([rows, cols], np.int64)}
  mask = table != 0
  out["values"] = stored.ravel() if layout == "dense" else stored[mask]  # row-major order
  if scales is not None:
    out["scales"] = scales
  if layout == "csr":
    nnz_per_row = mask.sum(axis=1)
    out["indices"] = np.nonzero(mask)[1].astype(_uint_dtype(max(cols - 1, 0)))
    out["indptr"] = np.concatenate([[0], np.cumsum(nnz_per_row)]).astype(
        _uint_dtype(int(mask.sum())))
  elif layout == "bitmap":
    out["bitmap"] = np.packbits(mask.ravel())
  return out


def decode_table(arrays: Dict[str, np.ndarray]) -> np.ndarray:
  """Inverse of :func:`encode_table`: ``[rows, cols]`` float32 (int8 values times their row's
  scale). Expects checked arrays (:func:`load` checks them)."""
  rows, cols = (int(x) for x in arrays["shape"])
  values = arrays["values"].astype(np.float32)
  if "indptr" in arrays:
    row_ids = np.repeat(np.arange(rows), np.diff(arrays["indptr"].astype(np.int64)))
    cols_ids = arrays["indices"].astype(np.int64)
  elif "bitmap" in arrays:
    flat = np.flatnonzero(np.unpackbits(arrays["bitmap"], count=rows * cols))
    row_ids, cols_ids = flat // max(cols, 1), flat % max(cols, 1)
  else:
    out = values.reshape(rows, cols)
    return out * arrays["scales"][:, None] if "scales" in arrays else out
  if "scales" in arrays:
    values = values * arrays["scales"][row_ids]
  out = np.zeros((rows, cols), np.float32)
  out[row_ids, cols_ids] = values
  return out


# --------------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------------


def _serialize(arrays: Dict[str, np.ndarray], meta: PackedMeta) -> bytes:
  """The file of named 1-D arrays and a meta (see the module docstring)."""
  header, chunks, offset = [], [], 0
  for name, a in arrays.items():
    a = np.ascontiguousarray(a)
    raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
    header.append([name, a.dtype.str.lstrip("<>|="), list(a.shape), offset])
    chunks.append(raw)
    offset += len(raw)
  body = meta.encode() + json.dumps(header, separators=(",", ":")).encode()
  head_len = len(body) - packed_meta.META_BYTES
  payload = b"".join(chunks)
  crc = zlib.crc32(payload, zlib.crc32(body, zlib.crc32(_PREFIX.pack(MAGIC, head_len, offset, 0)[
      :_PREFIX.size - 4])))
  return _PREFIX.pack(MAGIC, head_len, offset, crc) + body + payload


def _check_prefix(blob: bytes, source: str) -> tuple[int, int]:
  """(directory bytes, payload bytes) after checking magic, version, size and checksum."""
  if len(blob) < 8 and MAGIC.startswith(blob):
    _fail(source, "size", f"truncated: {len(blob)} bytes, shorter than the {FIXED_BYTES}-byte "
          "prefix and meta")
  if len(blob) < 8 or blob[:6] != _MAGIC_STEM:
    _fail(source, "magic", f"not a packed-table file (starts {blob[:8]!r}, expected {MAGIC!r})")
  if blob[:8] != MAGIC:
    version = blob[6:8].decode("ascii", "replace")
    hint = (" (an older file: rerun eval.py to re-pack it)" if version.isdigit() and
            version < VERSION else "")
    _fail(source, "version", f"format version {version!r} is not read here; this code reads "
          f"{VERSION!r}{hint}")
  if len(blob) < FIXED_BYTES:
    _fail(source, "size", f"truncated: {len(blob)} bytes, shorter than the {FIXED_BYTES}-byte "
          "prefix and meta")
  _, head_len, payload_len, crc = _PREFIX.unpack_from(blob)
  want = FIXED_BYTES + head_len + payload_len
  if want != len(blob):
    _fail(source, "size", f"{'truncated' if want > len(blob) else 'trailing bytes'}: the prefix "
          f"says {want:,} bytes ({FIXED_BYTES} + directory {head_len:,} + payload "
          f"{payload_len:,}), the file has {len(blob):,}")
  got = zlib.crc32(blob[_PREFIX.size:], zlib.crc32(blob[:_PREFIX.size - 4]))
  if got != crc:
    _fail(source, "checksum", f"CRC-32 of the contents is {got:#010x}, the file stores "
          f"{crc:#010x}: the file is damaged")
  return head_len, payload_len


def _directory(blob: bytes, head_len: int, source: str) -> list:
  """The parsed directory: a list of ``[name, dtype, [length], offset]`` (types checked)."""
  try:
    header = json.loads(blob[FIXED_BYTES:FIXED_BYTES + head_len].decode("utf-8"))
  except RecursionError:
    _fail(source, "directory", "JSON nested too deeply to be a list of arrays")
  except ValueError as e:  # json.JSONDecodeError, UnicodeDecodeError
    _fail(source, "directory", f"not valid JSON ({str(e)[:80]})")
  if not isinstance(header, list):
    _fail(source, "directory", f"expected a list of entries, got {type(header).__name__}")
  for i, entry in enumerate(header):
    ok = (isinstance(entry, list) and len(entry) == 4 and isinstance(entry[0], str) and
          isinstance(entry[1], str) and isinstance(entry[2], list) and len(entry[2]) == 1 and
          all(_is_int(x) for x in (entry[2][0], entry[3])))
    if not ok:
      _fail(source, f"directory[{i}]", f"{str(entry)[:80]} is not [name, dtype, [length], offset]")
  return header


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _entry_arrays(header: list, payload: memoryview, meta: PackedMeta,
                  source: str) -> Dict[str, Dict[str, np.ndarray]]:
  """``{table: {part: array}}`` zero-copy views, after checking names, dtypes and offsets."""
  grouped: Dict[str, Dict[str, np.ndarray]] = {}
  offset = 0
  for i, (name, dt, (length,), off) in enumerate(header):
    field = f"directory[{i}] ({name[:40]})"
    table, _, part = name.partition("/")
    if not table or part not in ("shape", "values", "scales", "indices", "indptr", "bitmap"):
      _fail(source, field, "name is not '<table>/<part>' with a known part")
    if part in grouped.get(table, {}):
      _fail(source, field, "appears twice")
    allowed = _allowed_dtypes(part, meta.value_dtype)
    if dt not in allowed:
      _fail(source, field, f"dtype {dt!r} not allowed for {part}; expected {' or '.join(allowed)}")
    if off != offset:
      _fail(source, field, f"offset {off} ≠ {offset} (arrays are stored back to back)")
    dtype = np.dtype("<" + dt)
    if length < 0 or offset + length * dtype.itemsize > len(payload):
      _fail(source, field, f"length {length} × {dtype.itemsize} bytes at offset {offset} runs past "
            f"the {len(payload):,}-byte payload")
    grouped.setdefault(table, {})[part] = np.frombuffer(payload, dtype, length, offset)
    offset += length * dtype.itemsize
  if offset != len(payload):
    _fail(source, "directory", f"arrays cover {offset:,} of the {len(payload):,} payload bytes")
  return grouped


def _allowed_dtypes(part: str, value_dtype: str) -> tuple:
  return {"shape": ("i8",), "values": (VALUE_DTYPES[value_dtype],), "scales": ("f4",),
          "indices": INDEX_DTYPES, "indptr": INDEX_DTYPES, "bitmap": ("u1",)}[part]


@dataclasses.dataclass(frozen=True)
class EncodedTable:
  """One table as stored: ``layout`` (one of ``LAYOUTS``), ``shape`` ``(rows, cols)``, and
  ``arrays`` ``{part: 1-D read-only array}`` — ``values`` (``nonzeros`` entries, or rows·cols for
  dense, in the file's value dtype), ``scales [rows] float32`` (int8 only), ``indices``/``indptr``
  (csr) or ``bitmap`` (packed bits, row-major). Serving code can compose rows from these without
  densifying."""

  name: str
  layout: str
  shape: tuple[int, int]
  arrays: Dict[str, np.ndarray]

  @property
  def nonzeros(self) -> int:
    """Stored entries (all rows·cols for dense)."""
    return int(self.arrays["values"].size)

  def dense(self) -> np.ndarray:
    """``[rows, cols]`` float32."""
    return decode_table(self.arrays)


@dataclasses.dataclass(frozen=True)
class PackedFile:
  """A checked ``.cerp`` file: its meta, its tables in file order, and its size in bytes."""

  meta: PackedMeta
  tables: Dict[str, EncodedTable]
  file_bytes: int


def _check_table(name: str, parts: Dict[str, np.ndarray], meta: PackedMeta,
                 source: str) -> EncodedTable:
  """An :class:`EncodedTable` after checking its parts against each other (no large allocation:
  every size below is bounded by the payload)."""
  def bad(problem):
    _fail(source, f"table {name}", problem)

  layout = next((l for l in LAYOUTS if set(parts) == set(_PARTS[l]) | (
      {"scales"} if meta.value_dtype == "int8" else set())), None)
  if layout is None:
    bad(f"parts {sorted(parts)} match no layout ({', '.join(LAYOUTS)}) for {meta.value_dtype}")
  if parts["shape"].size != 2 or (parts["shape"] < 0).any():
    bad(f"shape {parts['shape'].tolist()} is not [rows ≥ 0, cols ≥ 0]")
  rows, cols = (int(x) for x in parts["shape"])
  values = parts["values"]
  if "scales" in parts and parts["scales"].size != rows:
    bad(f"{parts['scales'].size} scales for {rows} rows")
  if layout == "dense" and values.size != rows * cols:
    bad(f"shape [{rows}, {cols}] needs {rows * cols:,} dense values, the file has {values.size:,}")
  if layout == "csr":
    _check_csr(parts, rows, cols, bad)
  if layout == "bitmap":
    _check_bitmap(parts, rows, cols, bad)
  return EncodedTable(name, layout, (rows, cols), parts)


def _check_csr(parts, rows, cols, bad):
  indptr, indices, nnz = parts["indptr"], parts["indices"], parts["values"].size
  if indptr.size != rows + 1:
    bad(f"indptr has {indptr.size:,} entries for {rows:,} rows (needs rows + 1)")
  falls = bool((indptr[1:] < indptr[:-1]).any())
  if indices.size != nnz or indptr[0] != 0 or int(indptr[-1]) != nnz or falls:
    bad(f"indptr runs {int(indptr[0])} → {int(indptr[-1])}{' and decreases' if falls else ''}; it "
        f"must rise from 0 to the {nnz:,} values ({indices.size:,} column indices)")
  if nnz and int(indices.max()) >= cols:
    bad(f"column index {int(indices.max())} ≥ cols={cols}")
  if indices.dtype != _uint_dtype(max(cols - 1, 0)) or indptr.dtype != _uint_dtype(nnz):
    bad(f"index dtypes {indices.dtype}/{indptr.dtype} are not the smallest for cols={cols}, "
        f"nnz={nnz}")


def _check_bitmap(parts, rows, cols, bad):
  bitmap, nnz = parts["bitmap"], parts["values"].size
  if bitmap.size != -(-rows * cols // 8):
    bad(f"bitmap has {bitmap.size:,} bytes for [{rows}, {cols}] (needs ceil(rows·cols/8) = "
        f"{-(-rows * cols // 8):,})")
  bits = np.unpackbits(bitmap)
  if bits[rows * cols:].any() or int(bits.sum()) != nnz:
    bad(f"bitmap marks {int(bits[:rows * cols].sum()):,} entries (and "
        f"{int(bits[rows * cols:].sum())} padding bits) for {nnz:,} values")


def _check_against_meta(meta: PackedMeta, tables: Dict[str, EncodedTable], source: str) -> None:
  want = meta.table_shapes()
  if want is None:
    return
  if set(want) != set(tables):
    _fail(source, "tables", f"{sorted(tables)} are not {meta.method}'s tables {sorted(want)}")
  for name, shape in want.items():
    if tables[name].shape != shape:
      _fail(source, f"table {name}", f"shape {list(tables[name].shape)} ≠ {list(shape)} from the "
            f"meta (method {meta.method}, N={meta.num_entities}, b={meta.bucket_size}, "
            f"d={meta.dim})")


def _read_blob(blob_or_path) -> tuple[bytes, str]:
  if isinstance(blob_or_path, (bytes, bytearray, memoryview)):
    return bytes(blob_or_path), "<bytes>"
  source = os.fspath(blob_or_path)
  try:
    with open(source, "rb") as f:
      return f.read(), source
  except FileNotFoundError:
    raise
  except OSError as e:
    raise PackedFileError(f"{source}: cannot read: {e.strerror or e}") from e


def load(blob_or_path) -> PackedFile:
  """Reads and checks a ``.cerp`` file, keeping each table in its stored layout.

  Checks, in order and before allocating anything table-sized: magic and version, the file size
  against the prefix's lengths, the CRC-32, the meta (:meth:`PackedMeta.validate`), every
  directory entry (name, dtype allow-list, contiguous offsets inside the payload), every table's
  structure (dense length, CSR pointers and indices, bitmap length and popcount, canonical index
  dtypes), and the tables' names and shapes against the meta.

  Args:
    blob_or_path: the file's bytes, or its path.

  Returns:
    the :class:`PackedFile` (arrays are read-only views of the file's bytes).

  Raises:
    PackedFileError: ``<file>: <field>: <problem>``, one per damaged file.
    FileNotFoundError: no such file.
  """
  blob, source = _read_blob(blob_or_path)
  head_len, _ = _check_prefix(blob, source)
  meta = PackedMeta.decode(blob[_PREFIX.size:FIXED_BYTES], source)
  header = _directory(blob, head_len, source)
  payload = memoryview(blob)[FIXED_BYTES + head_len:]
  grouped = _entry_arrays(header, payload, meta, source)
  tables = {name: _check_table(name, parts, meta, source) for name, parts in grouped.items()}
  _check_against_meta(meta, tables, source)
  return PackedFile(meta, tables, len(blob))


def read_header(blob_or_path) -> PackedMeta:
  """The :class:`PackedMeta` of a ``.cerp`` file (the whole file is checked, as by :func:`load`)."""
  return load(blob_or_path).meta


def pack(tables: Dict[str, np.ndarray], meta: Optional[PackedMeta] = None) -> tuple[bytes, dict]:
  """Packs a dict of 2-D tables, each in its smallest layout, with the meta that says how to use
  them.

  Args:
    tables: name → ``[rows, cols]`` float32 (CERP's ``{'P', 'Q'}``, the full table's ``{'E'}``, …),
      in the order of the embedding's ``tables()``.
    meta: the id layout (:meth:`PackedMeta.from_config`); None packs named tables without one
      ('raw', for measurements). Its ``value_dtype`` sets how values are stored.

  Returns:
    (the serialized file contents, a report): the report maps each table to its ``nonzeros``,
    ``shape``, the chosen ``layout``, and ``bytes_<layout>`` for every layout (each measured by
    serializing that table alone with the meta), plus ``packed_bytes`` = the size of the returned
    file, ``nonzeros`` and ``meta`` (a dict).

  Raises:
    PackedFileError: the meta is invalid or does not fit the tables' names and shapes.
    ValueError: a table is not 2-D, or overflows float16.
  """
  meta = PackedMeta() if meta is None else meta
  packed_meta.check_encodable(meta)
  meta.validate("meta")
  want = meta.table_shapes()
  got = {k: tuple(np.shape(v)) for k, v in tables.items()}
  if want is not None and got != want:
    _fail("meta", "tables", f"{got} are not the shapes {want} of method {meta.method}")
  report, chosen = {"tables": {}}, {}
  for name, table in tables.items():
    table = np.asarray(table, np.float32)
    sizes, encoded = {}, {}
    for layout in LAYOUTS:
      encoded[layout] = encode_table(table, layout, meta.value_dtype)
      sizes[layout] = len(_serialize(encoded[layout], meta))
    best = min(LAYOUTS, key=lambda l: sizes[l])
    report["tables"][name] = {"shape": list(table.shape), "nonzeros": int(np.count_nonzero(table)),
                              "layout": best, **{f"bytes_{l}": sizes[l] for l in LAYOUTS}}
    for k, v in encoded[best].items():
      chosen[f"{name}/{k}"] = v
  blob = _serialize(chosen, meta)
  report["packed_bytes"] = len(blob)
  report["nonzeros"] = sum(t["nonzeros"] for t in report["tables"].values())
  report["meta"] = meta.to_dict()
  return blob, report


def unpack(blob_or_path, with_meta: bool = False):
  """Reads a ``.cerp`` file (bytes or a path) back into dense ``[rows, cols]`` float32 tables.

  Returns:
    ``{name: table}``, or ``(tables, PackedMeta)`` with ``with_meta``.

  Raises:
    PackedFileError / FileNotFoundError: as :func:`load`.
  """
  packed = load(blob_or_path)
  tables = {name: t.dense() for name, t in packed.tables.items()}
  return (tables, packed.meta) if with_meta else tables


def write(path: os.PathLike | str, blob: bytes) -> int:
  """Writes atomically (temp file + rename); returns the file size in bytes."""
  path = os.fspath(path)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(blob)
  os.replace(tmp, path)
  return os.path.getsize(path)


# --------------------------------------------------------------------------------------------------
# Sizes in closed form (what pack() writes, without writing it)
# --------------------------------------------------------------------------------------------------


def _digits(x) -> np.ndarray:
  """Decimal digits of non-negative integers (vectorised, exact)."""
  x = np.asarray(x, np.int64)
  d = np.ones_like(x)
  for k in range(1, 19):
    d += x >= 10 ** k
  return d


def _uint_itemsize(max_value) -> np.ndarray:
  """Itemsize of :func:`_uint_dtype` (the smallest unsigned dtype holding the value), vectorised."""
  m = np.asarray(max_value, np.int64)
  return np.select([m <= 0xFF, m <= 0xFFFF, m <= 0xFFFFFFFF], [1, 2, 4], 8)


def _layout_arrays(layout: str, rows: int, cols: int, nnz,
                   value_dtype: str = "float32") -> list[tuple[str, object, object]]:
  """``(part, length, itemsize)`` of the 1-D arrays :func:`encode_table` writes, in its order (every
  stored dtype string has 2 characters)."""
  nnz = np.asarray(nnz, np.int64)
  vsize = np.dtype(VALUE_DTYPES[value_dtype]).itemsize
  head = [("shape", 2, 8)]
  scales = [("scales", rows, 4)] if value_dtype == "int8" else []
  if layout == "dense":
    return head + [("values", rows * cols + 0 * nnz, vsize)] + scales
  if layout == "csr":
    return head + [("values", nnz, vsize)] + scales + [
        ("indices", nnz, int(_uint_itemsize(max(cols - 1, 0)))),
        ("indptr", rows + 1, _uint_itemsize(nnz))]
  if layout == "bitmap":
    return head + [("values", nnz, vsize)] + scales + [("bitmap", -(-rows * cols // 8), 1)]
  raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}")


def _container_bytes(arrays: Sequence[tuple[str, object, object]]) -> np.ndarray:
  """Length of :func:`_serialize`'s output for named 1-D arrays ``(name, length, itemsize)``.

  ``FIXED_BYTES`` + the compact JSON directory (brackets and commas, and per entry
  ``11 + len(name) + len(dtype) + digits(length) + digits(offset)`` characters) + the payload.
  """
  offset = np.int64(0)
  header = 2 + max(len(arrays) - 1, 0)
  for name, length, itemsize in arrays:
    length = np.asarray(length, np.int64)
    header = header + 11 + len(name) + 2 + _digits(length) + _digits(offset)
    offset = offset + length * np.asarray(itemsize, np.int64)
  return FIXED_BYTES + header + offset


def layout_sizes(rows: int, cols: int, nnz, value_dtype: str = "float32") -> np.ndarray:
  """int64 ``[len(LAYOUTS), *shape(nnz)]``: bytes of one ``[rows, cols]`` table with ``nnz``
  non-zeros packed alone in each layout (the ``bytes_<layout>`` sizes :func:`pack` compares)."""
  return np.stack([np.broadcast_to(
      _container_bytes(_layout_arrays(l, rows, cols, nnz, value_dtype)), np.shape(nnz))
                   for l in LAYOUTS])


def chosen_layouts(rows: int, cols: int, nnz, value_dtype: str = "float32") -> np.ndarray:
  """Index into ``LAYOUTS`` of the layout :func:`pack` picks (smallest; ties to the first),
  int ``shape(nnz)``."""
  return np.argmin(layout_sizes(rows, cols, nnz, value_dtype), axis=0)


def packed_size(tables: Sequence[tuple[str, int, int, object]],
                value_dtype: str = "float32") -> np.ndarray:
  """Exact length of :func:`pack`'s file for tables of given shapes and non-zero counts.

  The size depends only on each table's shape and non-zero count (not on where the non-zeros are,
  nor on the meta's values: prefix and meta take ``FIXED_BYTES`` whatever they hold), so it costs
  microseconds where packing would cost seconds.

  Args:
    tables: ``(name, rows, cols, nnz)`` in the order of the embedding's ``tables()`` dict; ``nnz``
      may be an int array (broadcast across tables) to size many candidates at once.
    value_dtype: the meta's value dtype, one of ``VALUE_DTYPES``.

  Returns:
    bytes, int64 (0-d for scalar ``nnz``).
  """
  choices = [chosen_layouts(rows, cols, nnz, value_dtype) for _, rows, cols, nnz in tables]
  shape = np.broadcast_shapes(*[np.shape(c) for c in choices])
  out = np.zeros(shape, np.int64)
  for combo in itertools.product(range(len(LAYOUTS)), repeat=len(tables)):
    arrays = []
    for (name, rows, cols, nnz), li in zip(tables, combo):
      arrays += [(f"{name}/{part}", length, isz) for part, length, isz in
                 _layout_arrays(LAYOUTS[li], rows, cols, nnz, value_dtype)]
    hit = np.ones(shape, bool)
    for c, li in zip(choices, combo):
      hit &= np.broadcast_to(c == li, shape)
    if hit.any():
      out = np.where(hit, np.broadcast_to(_container_bytes(arrays), shape), out)
  return out


def ideal_bytes(nonzeros: int, rows: int, cols: int) -> int:
  """min(CSR, bitmap) payload bytes (float32 values) from nnz and shape, without container
  overhead: the yardstick the packed size is benchmarked against."""
  csr = 4 * nonzeros + nonzeros * _uint_dtype(max(cols - 1, 0)).itemsize + (
      rows + 1) * _uint_dtype(nonzeros).itemsize
  bitmap = 4 * nonzeros + -(-rows * cols // 8)
  return min(csr, bitmap)


def full_table_bytes(num_entities: int, dim: int) -> int:
  """Bytes of the uncompressed float32 ``[N, d]`` table: N·d·4 plus 16 bytes of shape (the
  yardstick of budget fractions, not a file size)."""
  return num_entities * dim * 4 + 16
