"""The ``.cerp`` packed-table file: what inference needs of an embedding, and nothing else.

Packed bytes are the serialized size of everything needed to rebuild the tables at inference —
values, indices/indptr or bitmap, shapes, the id layout — excluding thresholds. The budget solver
(:mod:`cerp_jax.budget`) predicts this size exactly. Each table is stored in the smallest of three
layouts:

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
entry costs ≈ 25 bytes plus its digits. CRC-32 guards against accidental damage (bit flips,
truncation, torn copies): it catches every burst of ≤ 32 flipped bits and misses random damage
with probability 2⁻³², costs 4 bytes of the budget, and runs at memory speed from the standard
library; it is not tamper-proofing (a cryptographic digest would not be either without a key).
Readers check the file size, the checksum, the meta, every directory entry and every table's
structure (and its shape against the meta) before allocating more than a few times the file's size;
each failure is one :class:`PackedFileError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from typing import Dict, Optional

import numpy as np

LAYOUTS = ("dense", "csr", "bitmap")
VERSION = "02"
MAGIC = b"CERPPK" + VERSION.encode()
_MAGIC_STEM = b"CERPPK"
_PREFIX = struct.Struct("<8sIQI")  # magic, directory bytes, payload bytes, CRC-32
_META = struct.Struct("<8s16s8s8s8Q")
FIXED_BYTES = _PREFIX.size + _META.size  # 128: prefix + meta, whatever the values

METHODS = ("cerp", "full", "qr", "hash", "pep", "raw")  # 'raw': named tables without an id layout
BACKBONES = ("mf", "mlp", "lightgcn")  # cerp_jax.models.make_backbone's
COMBINES = {"cerp": ("sum", "concat"), "qr": ("mult", "add", "concat"), "hash": ("sum",),
            "full": ("",), "pep": ("",), "raw": ("",)}
VALUE_DTYPES = {"float32": "f4", "float16": "f2", "int8": "i1"}  # value_dtype → stored dtype
INDEX_DTYPES = ("u1", "u2", "u4", "u8")
MAX_DIM = 1 << 16  # widest d a file may declare (bounds the dense size of a CSR table)
_PARTS = {"dense": ("shape", "values"), "csr": ("shape", "values", "indices", "indptr"),
          "bitmap": ("shape", "values", "bitmap")}
_MAX_FP16 = float(np.finfo(np.float16).max)


class PackedFileError(ValueError):
  """A ``.cerp`` file (or a meta given to :func:`pack`) is damaged or inconsistent; the message
  names the file and the field."""


def _fail(source: str, field: str, problem: str):
  raise PackedFileError(f"{source}: {field}: {problem}")


# --------------------------------------------------------------------------------------------------
# Meta: the id layout and what scores the vectors
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PackedMeta:
  """What inference needs besides the tables: how entity ids map to rows, and how rows combine.

  Entity ids are users ``0..U-1`` then items ``item_offset..item_offset+I-1`` (``item_offset = U``);
  ``N = U + I``. Per method (``r`` = remainder row, ``q`` = quotient row):

  ========  ===============================  ===================================================
  method    tables (``[rows, cols]``)         id → vector
  ========  ===============================  ===================================================
  cerp      P, Q ``[b, d]``                   ``P[id mod b] ⊕ Q[id div quotient_divisor]``,
                                              ``quotient_divisor = ceil(N/b) ≤ b``; ⊕ = combine
  qr        Q ``[ceil(N/b), d]``, R ``[b, d]``  ``Q[id div b] ⊕ R[id mod b]``, quotient_divisor = b
  hash      T ``[B, d]`` (B = bucket_size)    ``Σ_j T[h_j(id)]``, k = num_hashes functions seeded by
                                              hash_seed (:func:`cerp_jax.baselines.hash_indices`)
  full/pep  E ``[N, d]``                      ``E[id]``
  raw       any                               none (sizes and tests; no id layout)
  ========  ===============================  ===================================================

  Fields a method does not use are 0 (integers) or ``''`` (combine).

  Attributes:
    method: one of ``METHODS``.
    backbone: one of ``BACKBONES`` (``''`` for 'raw').
    combine: ⊕, one of ``COMBINES[method]``.
    value_dtype: one of ``VALUE_DTYPES`` ('float32' | 'float16' | 'int8').
    num_users, num_items, item_offset: U, I and the first item's entity id.
    dim: d, columns of every table (``≤ MAX_DIM``).
    bucket_size: b (cerp, qr) or B (hash).
    quotient_divisor: the divisor of the quotient index (cerp ``ceil(N/b)``, qr ``b``).
    num_hashes, hash_seed: k and the seed of the hashing trick.
  """

  method: str = "raw"
  backbone: str = ""
  combine: str = ""
  value_dtype: str = "float32"
  num_users: int = 0
  num_items: int = 0
  item_offset: int = 0
  dim: int = 0
  bucket_size: int = 0
  quotient_divisor: int = 0
  num_hashes: int = 0
  hash_seed: int = 0

  @property
  def num_entities(self) -> int:
    return self.num_users + self.num_items

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_config(cls, config, num_users: int, num_items: int,
                  value_dtype: str = "float32") -> "PackedMeta":
    """The meta of a trained model: ``config.model`` (embedding, backbone, dim, bucket_size,
    combine, qr_operation, hash_rows, hash_num_hashes, hash_seed) and the data's U and I.

    Raises:
      PackedFileError: the config gives an inconsistent layout (named field).
    """
    mc = config.model
    num_users, num_items, b = int(num_users), int(num_items), int(mc.bucket_size)
    n = num_users + num_items
    kw = dict(method=mc.embedding, backbone=mc.backbone, value_dtype=value_dtype,
              num_users=num_users, num_items=num_items, item_offset=num_users, dim=int(mc.dim))
    if mc.embedding == "cerp":
      kw.update(combine=mc.combine, bucket_size=b, quotient_divisor=-(-n // max(b, 1)))
    elif mc.embedding == "qr":
      kw.update(combine=mc.qr_operation, bucket_size=b, quotient_divisor=b)
    elif mc.embedding == "hash":
      kw.update(combine="sum", bucket_size=int(mc.hash_rows), num_hashes=int(mc.hash_num_hashes),
                hash_seed=int(mc.hash_seed))
    meta = cls(**kw)
    meta.validate("config.model")
    return meta

  def table_shapes(self) -> Optional[Dict[str, tuple[int, int]]]:
    """``{name: (rows, cols)}`` the method's tables must have (None for 'raw')."""
    n, b, d = self.num_entities, self.bucket_size, self.dim
    return {"cerp": {"P": (b, d), "Q": (b, d)}, "qr": {"Q": (-(-n // max(b, 1)), d), "R": (b, d)},
            "hash": {"T": (b, d)}, "full": {"E": (n, d)}, "pep": {"E": (n, d)}}.get(self.method)

  def validate(self, source: str) -> None:
    """Checks every field against the method's layout.

    Raises:
      PackedFileError: ``<source>: meta.<field>: …`` for the first bad field.
    """
    def bad(field, problem):
      _fail(source, f"meta.{field}", problem)

    if self.method not in METHODS:
      bad("method", f"{self.method!r} is not one of {METHODS}")
    if self.value_dtype not in VALUE_DTYPES:
      bad("value_dtype", f"{self.value_dtype!r} is not one of {tuple(VALUE_DTYPES)}")
    if self.combine not in COMBINES[self.method]:
      bad("combine", f"{self.combine!r} is not one of {COMBINES[self.method]} for {self.method}")
    for f in dataclasses.fields(self)[4:]:
      v = getattr(self, f.name)
      if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 64:
        bad(f.name, f"{v!r} is not an integer in [0, 2**64)")
    used = {"cerp": ("bucket_size", "quotient_divisor"), "qr": ("bucket_size", "quotient_divisor"),
            "hash": ("bucket_size", "num_hashes", "hash_seed")}.get(self.method, ())
    for name in ("bucket_size", "quotient_divisor", "num_hashes", "hash_seed"):
      if name not in used and getattr(self, name):
        bad(name, f"{getattr(self, name)} must be 0 for method {self.method!r}")
    if self.method == "raw":
      for name in ("backbone", "num_users", "num_items", "item_offset", "dim"):
        if getattr(self, name):
          bad(name, f"{getattr(self, name)!r} must be empty for method 'raw'")
      return
    self._validate_layout(bad)

  def _validate_layout(self, bad) -> None:
    if self.backbone not in BACKBONES:
      bad("backbone", f"{self.backbone!r} is not one of {BACKBONES}")
    if self.num_users < 1 or self.num_items < 1:
      bad("num_users" if self.num_users < 1 else "num_items", "must be ≥ 1")
    if self.item_offset != self.num_users:
      bad("item_offset", f"{self.item_offset} ≠ num_users={self.num_users} (items follow users)")
    if not 1 <= self.dim <= MAX_DIM:
      bad("dim", f"{self.dim} is not in [1, {MAX_DIM}]")
    n, b = self.num_entities, self.bucket_size
    if self.method in ("cerp", "qr", "hash") and not 1 <= b <= max(n, 1):
      bad("bucket_size", f"{b} is not in [1, N={n}]")
    if self.method == "cerp" and self.quotient_divisor != -(-n // b):
      bad("quotient_divisor", f"{self.quotient_divisor} ≠ ceil(N/b) = {-(-n // b)}")
    if self.method == "cerp" and self.quotient_divisor > b:
      bad("bucket_size", f"b={b} < ceil(N/b)={self.quotient_divisor}: (q, r) pairs collide")
    if self.method == "qr" and self.quotient_divisor != b:
      bad("quotient_divisor", f"{self.quotient_divisor} ≠ b = {b}")
    if self.method == "hash" and self.num_hashes < 1:
      bad("num_hashes", "must be ≥ 1")

  def encode(self) -> bytes:
    """The 104-byte meta block (validated first)."""
    self.validate("meta")
    return _META.pack(*(getattr(self, f.name).encode("ascii") if f.type == "str" else
                        getattr(self, f.name) for f in dataclasses.fields(self)))

  @classmethod
  def decode(cls, raw: bytes, source: str) -> "PackedMeta":
    """Inverse of :meth:`encode`; validates. Raises PackedFileError naming the field."""
    values = []
    for f, v in zip(dataclasses.fields(cls), _META.unpack(raw)):
      if f.type == "str":
        text = v.rstrip(b"\0")
        if b"\0" in text or not all(32 <= c < 127 for c in text):
          _fail(source, f"meta.{f.name}", f"{v!r} is not NUL-padded printable ASCII")
        v = text.decode("ascii")
      values.append(v)
    meta = cls(*values)
    meta.validate(source)
    return meta


def _fits_meta(meta: PackedMeta) -> None:
  for f, size in zip(dataclasses.fields(meta)[:4], (8, 16, 8, 8)):
    v = getattr(meta, f.name)
    if not isinstance(v, str) or not v.isascii() or len(v) > size:
      _fail("meta", f"meta.{f.name}", f"{v!r} is not ASCII of at most {size} characters")


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
  head_len = len(body) - _META.size
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
  _fits_meta(meta)
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


def ideal_bytes(nonzeros: int, rows: int, cols: int) -> int:
  """min(CSR, bitmap) payload bytes (float32 values) from nnz and shape, without container
  overhead (P6's yardstick)."""
  csr = 4 * nonzeros + nonzeros * _uint_dtype(max(cols - 1, 0)).itemsize + (
      rows + 1) * _uint_dtype(nonzeros).itemsize
  bitmap = 4 * nonzeros + -(-rows * cols // 8)
  return min(csr, bitmap)


def full_table_bytes(num_entities: int, dim: int) -> int:
  """Bytes of the uncompressed float32 ``[N, d]`` table: N·d·4 plus 16 bytes of shape (the
  yardstick of budget fractions, not a file size)."""
  return num_entities * dim * 4 + 16
