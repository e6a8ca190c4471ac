"""Top-K recommendations straight from a packed ``.cerp`` file: numpy on CPU, one user at a time,
no compilation (docs/packing.md, "Recommend from the packed file"; ``recommend.py`` is the CLI).

Tables stay in their stored layout and dtype; no ``[N, d]``, ``[b, d]`` or ``[I, d]`` array is
built. An item's score is a sum of row scores (CERP ``sum``: ``⟨e_u, P̂[r] + Q̂[q]⟩ =
(P̂ e_u)[r] + (Q̂ e_u)[q]``): one sparse matrix–vector product per table, a gather per item,
O(nnz + I) per user; items in chunks with a running top-K. Scores equal the dense scorer's up to
float32 summation order (≈ 1e-7 relative); ties go to the smaller item id, as ``jax.lax.top_k``.
Only dot-product backbones can be served. A hashing-trick file imports JAX (its hash functions).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence, Union

import numpy as np

from cerp_jax import packing

DOT_BACKBONES = ("mf",)  # backbones whose score is ⟨e_u, e_i⟩ of the composed vectors
DEFAULT_CHUNK_ITEMS = 65_536


class ServingError(ValueError):
  """The file's model cannot be served from the file alone (NCF-MLP, LightGCN, method 'raw')."""


# -------- One stored table, addressed by rows


class _Table:
  """A packed table in its stored layout (views of the file's arrays, plus row starts and a bitmap's
  column indices derived once): ``T[lo:hi] @ x`` and ``T[rows]`` without densifying."""

  def __init__(self, enc: packing.EncodedTable):
    self.rows, self.cols = enc.shape
    self.values = enc.arrays["values"]
    self.scales = enc.arrays.get("scales")  # [rows] float32 (int8 values) or None
    self.dense = None
    if enc.layout == "dense":
      self.dense = self.values.reshape(self.rows, self.cols)
      self.columns, self.starts = None, None
    elif enc.layout == "csr":
      self.columns = enc.arrays["indices"]
      self.starts = enc.arrays["indptr"].astype(np.intp)
    else:
      self.columns, self.starts = _bitmap_index(enc.arrays["bitmap"], self.rows, self.cols,
                                                self.values.size)

  @property
  def derived_bytes(self) -> int:
    """Bytes held besides the file's own arrays (row starts, a bitmap's column indices)."""
    n = 0 if self.starts is None else self.starts.nbytes
    return n + (self.columns.nbytes if self.columns is not None and self.columns.base is None
                else 0)

  def matvec(self, x: np.ndarray, lo: int = 0, hi: Optional[int] = None) -> np.ndarray:
    """``T[lo:hi] @ x``: ``x [cols]`` float32 → ``[hi − lo]`` float32, from the stored entries."""
    hi = self.rows if hi is None else hi
    if self.dense is not None:
      out = self.dense[lo:hi] @ x
    else:
      s0, s1 = int(self.starts[lo]), int(self.starts[hi])
      buf = np.empty(s1 - s0 + 1, np.float32)  # one trailing 0 for rows that start at the end
      np.take(x, self.columns[s0:s1], out=buf[:-1])
      buf[:-1] *= self.values[s0:s1]
      buf[-1] = 0
      starts = self.starts[lo:hi] - s0
      out = np.add.reduceat(buf, starts) if hi > lo else np.zeros(0, np.float32)
      out[self.starts[lo + 1:hi + 1] - s0 == starts] = 0  # reduceat gives buf[start] for empty rows
    out = out.astype(np.float32, copy=False)
    return out * self.scales[lo:hi] if self.scales is not None else out

  def gather(self, rows: np.ndarray) -> np.ndarray:
    """``T[rows]``: ``[n]`` row indices → ``[n, cols]`` float32, from the stored entries."""
    rows = np.asarray(rows, np.intp)
    if self.dense is not None:
      out = self.dense[rows].astype(np.float32)
    else:
      first, lens = self.starts[rows], self.starts[rows + 1] - self.starts[rows]
      which = np.repeat(np.arange(rows.size), lens)
      pos = np.arange(int(lens.sum())) + np.repeat(first - (np.cumsum(lens) - lens), lens)
      out = np.zeros((rows.size, self.cols), np.float32)
      out[which, self.columns[pos]] = self.values[pos]
    return out * self.scales[rows][:, None] if self.scales is not None else out


def _bitmap_index(bitmap: np.ndarray, rows: int, cols: int,
                  nnz: int) -> tuple[np.ndarray, np.ndarray]:
  """Column indices ``[nnz]`` (uint8 for cols ≤ 256, else uint16) and row starts ``[rows + 1]``
  intp of a row-major bitmap, unpacked in blocks of ≈ 1 Mbit."""
  columns = np.empty(nnz, np.uint8 if cols <= 256 else np.uint16)
  counts = np.zeros(rows, np.intp)
  block = max(8, (1 << 20) // max(cols, 1) // 8 * 8)  # rows per block, a multiple of 8
  pos = 0
  for r0 in range(0, rows, block):
    r1 = min(rows, r0 + block)
    bits = np.unpackbits(bitmap[r0 * cols // 8:-(-r1 * cols // 8)], count=(r1 - r0) * cols)
    r, c = np.nonzero(bits.reshape(r1 - r0, cols))
    columns[pos:pos + c.size] = c
    counts[r0:r1] = np.bincount(r, minlength=r1 - r0)
    pos += c.size
  return columns, np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)


# -------- Results and exclusions


@dataclasses.dataclass(frozen=True)
class Recommendations:
  """Top-K per user, best first: ``users [n]`` int64 (as asked), ``items [n, k]`` int64 0-based
  item ids (−1 pads when fewer than k remain), ``scores [n, k]`` float32 (−inf pads)."""

  users: np.ndarray
  items: np.ndarray
  scores: np.ndarray

  def as_dicts(self) -> list[dict]:
    """``[{'user': u, 'items': [...], 'scores': [...]}, ...]`` (pads dropped), JSON-ready."""
    out = []
    for u, items, scores in zip(self.users, self.items, self.scores):
      keep = items >= 0
      out.append({"user": int(u), "items": items[keep].tolist(),
                  "scores": [float(s) for s in scores[keep]]})
    return out


@dataclasses.dataclass(frozen=True)
class Exclusions:
  """Items never to recommend (training items), CSR over users: ``indptr [num_users + 1]`` int64,
  ``items [nnz]`` int64 ids sorted within each user."""

  indptr: np.ndarray
  items: np.ndarray

  @classmethod
  def from_pairs(cls, users: np.ndarray, items: np.ndarray, num_users: int) -> "Exclusions":
    """From ``[n]`` (user, item) pairs (duplicates allowed), users in ``[0, num_users)``."""
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    keep = np.ones(users.size, bool)
    keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items = users[keep], items[keep]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=num_users))])
    return cls(indptr.astype(np.int64), items)

  @classmethod
  def from_matrix(cls, m) -> "Exclusions":
    """From a ``[U, I]`` scipy CSR matrix (e.g. :attr:`cerp_jax.data.Interactions.train`)."""
    m = m.tocsr()
    users = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    return cls.from_pairs(users, m.indices, m.shape[0])

  def of(self, user: int) -> np.ndarray:
    """Sorted item ids of one user (empty past the last user)."""
    if user + 1 >= self.indptr.size:
      return self.items[:0]
    return self.items[self.indptr[user]:self.indptr[user + 1]]


def read_exclusions(path: Union[str, os.PathLike], meta: packing.PackedMeta,
                    source: str = "the packed file") -> Exclusions:
  """Items to exclude from a LightGCN-format file (``user item item …``), checked against the
  packed file's user and item counts (``source``: its name, for messages).

  Raises:
    cerp_jax.data.DataError: the file is missing, empty or malformed, or an id is beyond the counts
      (naming file, line and id).
  """
  from cerp_jax import data as data_lib  # pylint: disable=g-import-not-at-top (scipy, only here)
  pairs = data_lib.read_lightgcn_file(path)
  for name, ids, count in (("user", pairs.users, meta.num_users),
                           ("item", pairs.items, meta.num_items)):
    bad = np.flatnonzero(ids >= count)
    if bad.size:
      i = bad[0]
      raise data_lib.DataError(
          f"{path}:{int(pairs.lines[i])}: {name} {int(ids[i])} is out of range for {source} "
          f"({count:,} {name}s, ids 0..{count - 1}); is this the model's train.txt?")
  return Exclusions.from_pairs(pairs.users, pairs.items, meta.num_users)


# -------- The server


class Recommender:
  """Serves top-K items per user from a packed file, held in memory with its derived index arrays.

  Args:
    packed: a ``.cerp`` path, its bytes, or a loaded :class:`cerp_jax.packing.PackedFile`.
    chunk_items: items scored per chunk (bounds the per-request memory).
    compose_items: score each chunk's composed item vectors instead of row scores (always so for
      QR ``mult``, whose product does not split).

  Raises:
    cerp_jax.packing.PackedFileError: the file is damaged (``<file>: <field>: …``).
    FileNotFoundError: no such file.
    ServingError: the backbone is not a dot product (NCF-MLP, LightGCN), or method 'raw'.
    ValueError: ``chunk_items < 1``.
  """

  def __init__(self, packed, chunk_items: int = DEFAULT_CHUNK_ITEMS, compose_items: bool = False):
    if int(chunk_items) < 1:
      raise ValueError(f"chunk_items={chunk_items}: must be ≥ 1")
    self.chunk_items = int(chunk_items)
    if isinstance(packed, packing.PackedFile):
      self.file, self.source = packed, "<PackedFile>"
    else:
      self.file = packing.load(packed)
      self.source = "<bytes>" if isinstance(packed, (bytes, bytearray, memoryview)) else \
          os.fspath(packed)
    self.meta = meta = self.file.meta
    _check_servable(meta, self.source)
    self.tables = {name: _Table(t) for name, t in self.file.tables.items()}
    self._terms = None if compose_items else _row_terms(meta)
    if meta.method == "hash":
      from cerp_jax import baselines  # pylint: disable=g-import-not-at-top (imports jax)
      self._hash = lambda ids: baselines.hash_indices(ids, meta.bucket_size, meta.num_hashes,
                                                      meta.hash_seed, xp=np)

  @property
  def num_users(self) -> int:
    return self.meta.num_users

  @property
  def num_items(self) -> int:
    return self.meta.num_items

  @property
  def resident_bytes(self) -> int:
    """Bytes held between requests: the file plus the derived index arrays."""
    return self.file.file_bytes + sum(t.derived_bytes for t in self.tables.values())

  def compose(self, ids: np.ndarray) -> np.ndarray:
    """``[n]`` entity ids (users ``0..U-1``, items from ``item_offset``) → ``[n, out_dim]`` float32
    vectors composed from the packed rows, as the method's embedding module does."""
    m, t = self.meta, self.tables
    ids = np.asarray(ids, np.int64)
    if m.method == "cerp":
      a, b = t["P"].gather(ids % m.bucket_size), t["Q"].gather(ids // m.quotient_divisor)
      return a + b if m.combine == "sum" else np.concatenate([a, b], axis=-1)
    if m.method == "qr":
      a, b = t["Q"].gather(ids // m.bucket_size), t["R"].gather(ids % m.bucket_size)
      return {"mult": lambda: a * b, "add": lambda: a + b,
              "concat": lambda: np.concatenate([a, b], axis=-1)}[m.combine]()
    if m.method == "hash":
      idx = self._hash(ids)
      return t["T"].gather(idx.ravel()).reshape(*idx.shape, -1).sum(axis=-2)
    return t["E"].gather(ids)

  def scores(self, user: int) -> np.ndarray:
    """``[I]`` float32 scores of every item for one user (no exclusion; for checks)."""
    self._check_users([user])
    u = self.compose([user])[0]
    row_scores = {}
    return np.concatenate([self._chunk_scores(u, lo, min(lo + self.chunk_items, self.num_items),
                                              row_scores)
                           for lo in range(0, self.num_items, self.chunk_items)])

  def top_k(self, users: Sequence[int], k: int = 20, exclude=None) -> Recommendations:
    """The k best items of each user, best first.

    Args:
      users: user ids in ``[0, num_users)``.
      k: items per user (≥ 1).
      exclude: None, an :class:`Exclusions`, a ``[U, I]`` scipy CSR matrix, or the path of a
        LightGCN-format ``train.txt``: those items are never returned.

    Returns:
      :class:`Recommendations`.

    Raises:
      ValueError: a user id out of range or not an integer, ``k < 1``, an ``exclude`` matrix of
        another shape; DataError of :func:`read_exclusions`.
    """
    users = self._check_users(users)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise ValueError(f"k={k!r}: must be an integer ≥ 1")
    exclude = self._exclusions(exclude)
    items = np.full((users.size, k), -1, np.int64)
    scores = np.full((users.size, k), -np.inf, np.float32)
    for row, user in enumerate(users):
      its, sc = self._top_k_one(int(user), int(k), None if exclude is None else exclude.of(user))
      items[row, :its.size], scores[row, :its.size] = its, sc
    return Recommendations(users, items, scores)

  # ------------------------------------------------------------------------------------------------

  def _check_users(self, users) -> np.ndarray:
    arr = np.asarray(users)
    if arr.ndim > 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
      raise ValueError(f"users={users!r}: expected a sequence of integer user ids")
    arr = arr.reshape(-1).astype(np.int64)
    bad = arr[(arr < 0) | (arr >= self.num_users)]
    if bad.size:
      raise ValueError(f"user {int(bad[0])} is out of range: {self.source} has {self.num_users:,} "
                       f"users (ids 0..{self.num_users - 1})")
    return arr

  def _exclusions(self, exclude) -> Optional[Exclusions]:
    if exclude is None or isinstance(exclude, Exclusions):
      return exclude
    if isinstance(exclude, (str, os.PathLike)):
      return read_exclusions(exclude, self.meta, self.source)
    if exclude.shape != (self.num_users, self.num_items):
      raise ValueError(f"exclude: shape {exclude.shape} ≠ [{self.num_users}, {self.num_items}] "
                       f"of {self.source}")
    return Exclusions.from_matrix(exclude)

  def _top_k_one(self, user: int, k: int, excluded: Optional[np.ndarray]):
    """(``[≤ k]`` item ids, scores) of one user, best first, excluded items and −inf dropped."""
    u = self.compose([user])[0]
    row_scores = {}
    items, scores = [], []
    for lo in range(0, self.num_items, self.chunk_items):
      hi = min(lo + self.chunk_items, self.num_items)
      s = self._chunk_scores(u, lo, hi, row_scores)
      if excluded is not None and excluded.size:
        a, b = np.searchsorted(excluded, (lo, hi))
        s[excluded[a:b] - lo] = -np.inf
      sel = _top_positions(s, None, k)
      items.append(sel + lo)
      scores.append(s[sel])
      if len(items) > 1:  # keep only the running top-k
        its, sc = np.concatenate(items), np.concatenate(scores)
        keep = _top_positions(sc, its, k)
        items, scores = [its[keep]], [sc[keep]]
    its, sc = items[0], scores[0]
    order = np.lexsort((its, -sc))
    order = order[sc[order] > -np.inf]
    return its[order], sc[order]

  def _chunk_scores(self, u: np.ndarray, lo: int, hi: int, row_scores: dict) -> np.ndarray:
    """``[hi − lo]`` float32 scores of items ``lo..hi−1`` (``row_scores``: a per-request cache)."""
    first, last = lo + self.meta.item_offset, hi + self.meta.item_offset  # entity ids
    if self._terms is None:
      return self.compose(np.arange(first, last)) @ u
    out = np.zeros(hi - lo, np.float32)
    for name, part, kind, n in self._terms:
      x = u if part is None else u[part]
      table = self.tables[name]
      if kind == "rows":  # per-entity table: the chunk's own rows
        out += table.matvec(x, first, last)
        continue
      if name not in row_scores:
        row0, row1 = self._item_rows(kind, n, table.rows)
        row_scores[name] = (row0, table.matvec(x, row0, row1))
      row0, s = row_scores[name]
      if kind == "hash":
        out += s[self._hash(np.arange(first, last))].sum(axis=-1)
      else:
        out += _gather_range(s, kind, n, first, last, row0)
    return out

  def _item_rows(self, kind: str, n: int, rows: int) -> tuple[int, int]:
    """Rows ``[row0, row1)`` of a shared table that items use (CERP's Q: ≈ I/N of its rows)."""
    if kind != "div":
      return 0, rows
    m = self.meta
    return m.item_offset // n, (m.item_offset + m.num_items - 1) // n + 1


def _row_terms(meta: packing.PackedMeta):
  """How an item score splits into row scores: ``[(table, slice of e_u or None, kind, n)]``, kind
  ``'mod'`` (row id mod n), ``'div'`` (id div n), ``'hash'`` (k hashed rows summed) or ``'rows'``
  (row id); None for QR ``mult``."""
  b, c, d = meta.bucket_size, meta.quotient_divisor, meta.dim
  cat = meta.combine == "concat"
  first, second = (slice(0, d), slice(d, 2 * d)) if cat else (None, None)
  if meta.method == "cerp":
    return [("P", first, "mod", b), ("Q", second, "div", c)]
  if meta.method == "qr":
    return None if meta.combine == "mult" else [("Q", first, "div", b), ("R", second, "mod", b)]
  if meta.method == "hash":
    return [("T", None, "hash", 0)]
  return [("E", None, "rows", 0)]


def _gather_range(s: np.ndarray, kind: str, n: int, lo: int, hi: int, row0: int = 0) -> np.ndarray:
  """``[hi − lo]``: ``s[id mod n − row0]`` or ``s[id div n − row0]`` for ids ``lo..hi−1`` by cycling
  or repeating ``s`` (no index array); ``row0`` is the row of ``s[0]`` (0 for 'mod')."""
  if kind == "mod":
    start = lo % n
    return np.resize(np.concatenate([s[start:], s[:start]]), hi - lo)
  q0, q1 = lo // n, (hi - 1) // n
  runs = np.full(q1 - q0 + 1, n, np.int64)
  runs[0] = min(hi, (q0 + 1) * n) - lo
  if q1 > q0:
    runs[-1] = hi - q1 * n
  return np.repeat(s[q0 - row0:q1 + 1 - row0], runs)


def _top_positions(scores: np.ndarray, ids: Optional[np.ndarray], k: int) -> np.ndarray:
  """Positions of the k largest scores (all when ≤ k), ties to the smaller id (``ids``, or the
  position when None), as ``jax.lax.top_k``."""
  if scores.size <= k:
    return np.arange(scores.size)
  kth = np.partition(scores, scores.size - k)[scores.size - k]
  above = np.flatnonzero(scores > kth)
  tied = np.flatnonzero(scores == kth)
  tied = (tied if ids is None else tied[np.argsort(ids[tied], kind="stable")])[:k - above.size]
  return np.concatenate([above, tied])


def _check_servable(meta: packing.PackedMeta, source: str) -> None:
  """Raises ServingError unless the file's scores are dot products of composed vectors."""
  if meta.method == "raw":
    raise ServingError(f"{source}: method 'raw' has no id layout (tables only); pack the model "
                       "with its meta (eval.py does) to serve it")
  if meta.backbone == "mlp":
    raise ServingError(
        f"{source}: backbone 'mlp' (NCF-MLP) scores a user-item pair with an MLP whose weights "
        "the .cerp file does not store (it holds the embedding tables; eval.json reports "
        "backbone_bytes separately), so it cannot be served from the file alone; dot-product "
        "backbones (mf) can")
  if meta.backbone == "lightgcn":
    n, d = meta.num_entities, meta.dim * (2 if meta.combine == "concat" else 1)
    raise ServingError(
        f"{source}: backbone 'lightgcn' scores vectors propagated over the training graph, "
        "mean(E, AE, ..., A^L E), and the file holds only the layer-0 tables: serving needs the "
        f"training interactions and one propagation of all N = {n:,} vectors ([N, {d}] float32, "
        f"{n * d * 4 / 2 ** 20:.1f} MiB; docs/packing.md), which this "
        "server does not do")
  if meta.backbone not in DOT_BACKBONES:
    raise ServingError(f"{source}: backbone {meta.backbone!r} is not one of {DOT_BACKBONES}")


def recommend(packed, users: Sequence[int], k: int = 20, exclude=None,
              chunk_items: int = DEFAULT_CHUNK_ITEMS) -> Recommendations:
  """``Recommender(packed, chunk_items).top_k(users, k, exclude)`` in one call (``recommend.py``'s
  contract): a :class:`Recommendations`; arguments and errors as there."""
  return Recommender(packed, chunk_items=chunk_items).top_k(users, k, exclude)
