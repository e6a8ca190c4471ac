"""The meta block of a ``.cerp`` file: how entity ids map to table rows, and how rows combine.

:class:`PackedMeta` is the 104-byte block after the file's prefix (:mod:`cerp_jax.packing`): method
8s, backbone 16s, combine 8s, value_dtype 8s (ASCII, NUL-padded), then uint64 num_users, num_items,
item_offset, dim, bucket_size, quotient_divisor, num_hashes, hash_seed (little-endian).
"""

from __future__ import annotations

import dataclasses
import struct
from typing import Dict, Optional

METHODS = ("cerp", "full", "qr", "hash", "pep", "raw")  # 'raw': named tables without an id layout
BACKBONES = ("mf", "mlp", "lightgcn")  # cerp_jax.models.make_backbone's
COMBINES = {"cerp": ("sum", "concat"), "qr": ("mult", "add", "concat"), "hash": ("sum",),
            "full": ("",), "pep": ("",), "raw": ("",)}
VALUE_DTYPES = {"float32": "f4", "float16": "f2", "int8": "i1"}  # value_dtype → stored dtype
MAX_DIM = 1 << 16  # widest d a file may declare (bounds the dense size of a CSR table)
_META = struct.Struct("<8s16s8s8s8Q")
META_BYTES = _META.size  # 104


class PackedFileError(ValueError):
  """A ``.cerp`` file (or a meta given to :func:`cerp_jax.packing.pack`) is damaged or
  inconsistent; the message names the file and the field."""


def _fail(source: str, field: str, problem: str):
  raise PackedFileError(f"{source}: {field}: {problem}")


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


def check_encodable(meta: PackedMeta) -> None:
  """Checks that the string fields fit the meta block (ASCII, 8/16/8/8 characters).

  Raises:
    PackedFileError: ``meta: meta.<field>: …`` for the first that does not.
  """
  for f, size in zip(dataclasses.fields(meta)[:4], (8, 16, 8, 8)):
    v = getattr(meta, f.name)
    if not isinstance(v, str) or not v.isascii() or len(v) > size:
      _fail("meta", f"meta.{f.name}", f"{v!r} is not ASCII of at most {size} characters")
