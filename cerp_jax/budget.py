"""Budget solver: turns (method, byte budget) into the settings whose packed tables fill the budget.

A budget is a number of bytes of the *packed* embedding tables, measured by one packer for every
method (:mod:`cerp_jax.packing`). Sweeps give budgets as fractions of the
uncompressed float32 ``[N, d_ref]`` table, ``packing.full_table_bytes(N, d_ref) = N·d_ref·4 + 16``.
Every setting must land in ``[lo, hi]·budget`` (default ``[0.9, 1.0]``) of measured packed bytes.

How each method is sized (the knob, and what stays fixed):

============  ===========================  ============================================================
method        knob                          sizing rule
============  ===========================  ============================================================
``full``      d                             largest d whose dense ``[N, d]`` table fits (the "smaller d"
                                            baseline)
``qr``        b (remainder rows)            largest b ≥ ceil(√N) whose ``[ceil(N/b), d_ref] + [b, d_ref]``
                                            fits (b < √N mirrors a larger b with the roles swapped)
``hash``      B (rows)                      largest B whose ``[B, d_ref]`` table fits
``pep``       target sparsity s (of N·d)    the largest non-zero count n whose packed ``[N, d_ref]``
                                            table fits; s = 1 − n/(N·d_ref)
``magnitude`` non-zeros n of N·d            exactly as ``pep`` (the same element-sparse ``[N, d_ref]``
                                            table and packed layout): magnitude pruning of the trained
                                            full table to n non-zeros (:mod:`cerp_jax.magnitude`)
``cerp``      b, then s (of 2·b·d)          b: largest (≥ the smallest valid b) whose tables fit at the
                                            configured sparsity ``cerp_sparsity`` (float16/int8: or
                                            0.1, 0.2, … below it, see ``_cerp_sparsities``); then s
                                            is lowered to the largest non-zero count that still fits
============  ===========================  ============================================================

**Value dtypes.** A method spec ``<method>@<value dtype>`` (``full@int8``, ``qr@float16``,
``cerp@int8``; a bare ``<method>`` is ``@float32``) sizes the method for tables packed with that
``packing.VALUE_DTYPES`` value dtype (post-training quantization at eval time, ``config.pack``): the
same rules with 2-byte (float16) or 1-byte + a float32 scale per row (int8) values, so e.g. the full
table at 10 % is d = 12 in float32 and d = 47 in int8. The model still trains in float32.

Sizes come from :func:`cerp_jax.packing.packed_size` (the packer's own closed form, exact). Dense
methods are predicted exactly (all entries non-zero ⇒ the packer picks the dense layout). For pruned
methods the packed size depends on how many non-zeros each table keeps; the prediction is an upper
bound: the worst split of n non-zeros over CERP's two tables, plus ``SLACK_BYTES`` for the header
digits of smaller counts (the snapshot is taken at the first step with ≤ n non-zeros, so a run can
only land lower). The sweep verifies the measured size of every run after packing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from cerp_jax import baselines
from cerp_jax import embeddings as emb_lib
from cerp_jax import packing

METHODS = ("full", "qr", "hash", "pep", "cerp", "magnitude")
VALUE_DTYPES = tuple(packing.VALUE_DTYPES)  # 'float32' (default), 'float16', 'int8'
SLACK_BYTES = 32  # header-digit jitter allowance for pruned methods (see module docstring)


class BudgetError(ValueError):
  """No setting of a method lands in the budget window."""


def parse_method(spec: str) -> tuple[str, str]:
  """``'full@int8'`` → ``('full', 'int8')``; a bare ``'full'`` → ``('full', 'float32')``.

  Raises:
    ValueError: unknown method or value dtype (named, with the expected ones).
  """
  method, sep, dtype = str(spec).partition("@")
  dtype = dtype if sep else "float32"
  if method not in METHODS or dtype not in VALUE_DTYPES:
    raise ValueError(f"method={spec!r}: expected <method>[@<value dtype>] with method in {METHODS} "
                     f"and value dtype in {VALUE_DTYPES}, e.g. 'full@int8'")
  return method, dtype


def method_spec(method: str, value_dtype: str = "float32") -> str:
  """The inverse of :func:`parse_method`: ``'full'`` for float32, else ``'full@int8'``."""
  return method if value_dtype == "float32" else f"{method}@{value_dtype}"


# --------------------------------------------------------------------------------------------------
# Packed sizes (cerp_jax.packing's closed form)
# --------------------------------------------------------------------------------------------------


def dense_bytes(tables: Sequence[tuple[str, int, int]], value_dtype: str = "float32") -> int:
  """Packed bytes of fully dense (no zero entry) tables ``(name, rows, cols)``, exact
  (:func:`cerp_jax.packing.packed_size`)."""
  return int(packing.packed_size([(n, r, c, r * c) for n, r, c in tables], value_dtype))


def _value_itemsize(value_dtype: str) -> int:
  return np.dtype(packing.VALUE_DTYPES[value_dtype]).itemsize


def budget_bytes(fraction: float, num_entities: int, reference_dim: int) -> int:
  """``floor(fraction · (N·d_ref·4 + 16))``: a budget given as a fraction of the full table."""
  return int(math.floor(fraction * packing.full_table_bytes(num_entities, reference_dim)))


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setting:
  """The solver's answer for one (method, budget).

  Attributes:
    method: one of ``METHODS``.
    budget_fraction: the budget as a fraction of the full float32 ``[N, d_ref]`` table (for a
      ``reference=True`` run: its table's share of it, 1.0 at d_ref).
    budget_bytes: the budget in bytes.
    overrides: config fields (dotted paths) that realise the setting, e.g. ``{'model.dim': 3}``.
    predicted_bytes: packed bytes the run will have (dense methods: exact; pruned: an upper bound).
    predicted_min_bytes: the least packed bytes if the snapshot has exactly the budgeted non-zeros
      (the best split of them over tables); equal to ``predicted_bytes`` for dense methods.
    nonzeros: the non-zero budget of a pruned method (``int((1 − s)·entries)``), else None.
    summary: human-readable knob values, e.g. ``'b=1,666 s=0.4996'``.
    reference: the uncompressed full table at ``d_ref`` (a marker, not a budgeted run).
    value_dtype: the packed value dtype the setting is sized for (``packing.VALUE_DTYPES``); not
      float32 ⇒ ``overrides`` also sets ``pack.value_dtype``.
  """

  method: str
  budget_fraction: float
  budget_bytes: int
  overrides: dict
  predicted_bytes: int
  predicted_min_bytes: int
  nonzeros: Optional[int]
  summary: str
  reference: bool = False
  value_dtype: str = "float32"

  @property
  def spec(self) -> str:
    """The method spec, ``'full'`` or ``'full@int8'`` (:func:`parse_method`)."""
    return method_spec(self.method, self.value_dtype)

  @property
  def fill(self) -> float:
    return self.predicted_bytes / self.budget_bytes

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["overrides"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.overrides.items()}
    return d


def _check_window(method, budget, lo_bytes, hi_bytes, fraction, window, what):
  if not window[0] * budget <= lo_bytes <= hi_bytes <= window[1] * budget:
    raise BudgetError(
        f"{method} at budget {fraction:g} ({budget:,} bytes): {what} packs to {lo_bytes:,}–"
        f"{hi_bytes:,} bytes = {lo_bytes / budget:.1%}–{hi_bytes / budget:.1%} of the budget, outside "
        f"[{window[0]:.0%}, {window[1]:.0%}]; change the budget fractions (config sweep.budgets)")


def _largest(lo: int, hi: int, fits) -> Optional[int]:
  """Largest integer x in [lo, hi] with fits(x), for a monotone predicate (True then False)."""
  if lo > hi or not fits(lo):
    return None
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if fits(mid):
      lo = mid
    else:
      hi = mid - 1
  return lo


def sparsity_for(nonzeros: int, entries: int) -> float:
  """A target sparsity s (rounded to 8 decimals) whose budget ``int((1 − s)·entries)``
  (:func:`cerp_jax.pruning.budgets`) is at most ``nonzeros`` and as close to it as the rounding
  allows."""
  s = round(1.0 - nonzeros / entries, 8)
  while int((1 - s) * entries) > nonzeros:
    s = round(s + 1e-8, 8)
  while s - 1e-8 > 0 and int((1 - (s - 1e-8)) * entries) <= nonzeros:
    s = round(s - 1e-8, 8)
  return s


def solve_full(budget: int, num_entities: int, value_dtype: str = "float32") -> tuple[int, int]:
  """(d, bytes): the widest full table ``[N, d]`` that fits (values in ``value_dtype``)."""
  def size(d):
    return dense_bytes([("E", num_entities, d)], value_dtype)

  vsize = _value_itemsize(value_dtype)
  d = _largest(1, max(budget // (vsize * num_entities), 1) + 1, lambda d: size(d) <= budget)
  if d is None:
    raise BudgetError(f"full: even d=1 ({size(1):,} bytes) exceeds the budget of {budget:,} bytes")
  return d, size(d)


def qr_bytes(num_entities: int, num_collisions: int, dim: int, value_dtype: str = "float32") -> int:
  """Packed bytes of QR's tables ``Q [ceil(N/b), d]``, ``R [b, d]`` (dense)."""
  return dense_bytes([("Q", baselines.qr_num_quotients(num_entities, num_collisions), dim),
                      ("R", num_collisions, dim)], value_dtype)


def solve_qr(budget: int, num_entities: int, dim: int,
             value_dtype: str = "float32") -> tuple[int, int]:
  """(b, bytes): the largest remainder table b ≥ ceil(√N) whose QR tables fit."""
  def size(b):
    return qr_bytes(num_entities, b, dim, value_dtype)

  b_lo = max(1, math.isqrt(max(num_entities - 1, 0)) + 1) if num_entities > 1 else 1
  b_lo = min(b_lo, num_entities)
  b = _largest(b_lo, num_entities, lambda b: size(b) <= budget)
  if b is None:
    raise BudgetError(f"qr: the smallest QR tables (b={b_lo}: {size(b_lo):,} bytes) exceed the "
                      f"budget of {budget:,} bytes at d={dim}")
  return b, size(b)


def solve_hash(budget: int, dim: int, value_dtype: str = "float32") -> tuple[int, int]:
  """(B, bytes): the most rows of the shared ``[B, d]`` table that fit."""
  def size(r):
    return dense_bytes([("T", r, dim)], value_dtype)

  vsize = _value_itemsize(value_dtype)
  rows = _largest(1, max(budget // (vsize * dim), 1) + 1, lambda r: size(r) <= budget)
  if rows is None:
    raise BudgetError(f"hash: one row of d={dim} exceeds the budget of {budget:,} bytes")
  return rows, size(rows)


def pep_bytes(num_entities: int, dim: int, nonzeros, value_dtype: str = "float32") -> np.ndarray:
  """Packed bytes of PEP's ``E [N, d]`` with ``nonzeros`` non-zeros (exact)."""
  return packing.packed_size([("E", num_entities, dim, nonzeros)], value_dtype)


def solve_pep(budget: int, num_entities: int, dim: int,
              value_dtype: str = "float32") -> tuple[float, int, int, int]:
  """(s, nonzeros, upper bytes, bytes at nonzeros): the most non-zeros of ``[N, d]`` that fit."""
  def size(n):
    return int(pep_bytes(num_entities, dim, n, value_dtype))

  entries = num_entities * dim
  n = _largest(0, entries, lambda n: size(n) + SLACK_BYTES <= budget)
  if n is None:
    raise BudgetError(f"pep: even an empty [N, d] table exceeds the budget of {budget:,} bytes")
  s = sparsity_for(n, entries)
  n = int((1 - s) * entries)
  exact = size(n)
  return s, n, exact + SLACK_BYTES, exact


def _split_candidates(total: int, per_table: int, rows: int, cols: int,
                      value_dtype: str = "float32") -> np.ndarray:
  """Non-zeros of the first of two equal ``[rows, cols]`` tables worth checking for the extreme
  packed size of ``total`` non-zeros: the ends, the middle, and every point where a table's size
  stops being linear (layout changes, index dtype changes, digit changes), mirrored."""
  lo, hi = max(0, total - per_table), min(total, per_table)
  # where the chosen layout or the indptr dtype changes (piecewise-linear pieces of a table's size)
  breaks = [0, per_table, 0xFF, 0x100, 0xFFFF, 0x10000]
  breaks += [10 ** k + e for k in range(1, 10) for e in (-1, 0)]
  grid = np.arange(0, per_table + 1, max(1, per_table // 4096))
  ch = packing.chosen_layouts(rows, cols, grid, value_dtype)
  for i in np.nonzero(np.diff(ch))[0]:  # refine each layout change on the coarse grid
    a, b = int(grid[i]), int(grid[i + 1])
    seg = np.arange(a, b + 1)
    c = packing.chosen_layouts(rows, cols, seg, value_dtype)
    breaks += [int(seg[j]) for j in np.nonzero(np.diff(c))[0]] + [a, b]
  pts = set()
  for x in breaks:
    for y in (x - 1, x, x + 1, total - x - 1, total - x, total - x + 1):
      pts.add(y)
  pts |= {lo, hi, total // 2, total - total // 2}
  return np.array(sorted(p for p in pts if lo <= p <= hi), np.int64)


def cerp_bytes_range(num_entities: int, bucket_size: int, dim: int, nonzeros: int,
                     value_dtype: str = "float32") -> tuple[int, int]:
  """(min, max) packed bytes of CERP's ``P, Q [b, d]`` over the splits of ``nonzeros`` between them."""
  del num_entities
  per = bucket_size * dim
  a = _split_candidates(nonzeros, per, bucket_size, dim, value_dtype)
  sizes = packing.packed_size([("P", bucket_size, dim, a), ("Q", bucket_size, dim, nonzeros - a)],
                              value_dtype)
  return int(sizes.min()), int(sizes.max())


def solve_cerp(budget: int, num_entities: int, dim: int, sparsity: float,
               value_dtype: str = "float32") -> tuple[int, float, int, int, int]:
  """(b, s, nonzeros, upper bytes, min bytes): CERP sized at a fixed target sparsity, then filled.

  b is the largest bucket size (at least the smallest valid one, ``ceil(N/b) ≤ b``) whose tables at
  target sparsity ``sparsity`` fit in the worst split; then s is lowered to the largest non-zero
  count that still fits (so the file lands as close under the budget as possible).
  """
  b_min = emb_lib.smallest_valid_bucket_size(num_entities)

  def upper(b, n):
    return cerp_bytes_range(num_entities, b, dim, n, value_dtype)[1] + SLACK_BYTES

  b = _largest(b_min, max(num_entities, b_min),
               lambda b: upper(b, int((1 - sparsity) * 2 * b * dim)) <= budget) or b_min
  entries = 2 * b * dim
  n = _largest(0, entries, lambda n: upper(b, n) <= budget)
  if n is None:
    raise BudgetError(f"cerp: even empty tables at the smallest valid b={b_min} exceed the budget of "
                      f"{budget:,} bytes")
  s = sparsity_for(n, entries)
  n = int((1 - s) * entries)
  lo, hi = cerp_bytes_range(num_entities, b, dim, n, value_dtype)
  return b, s, n, hi + SLACK_BYTES, lo


def solve(method: str, fraction: float, num_entities: int, reference_dim: int, *,
          cerp_sparsity: float = 0.5, window: Sequence[float] = (0.9, 1.0)) -> Setting:
  """Settings of one method for a budget of ``fraction`` × the full float32 ``[N, d_ref]`` table.

  Args:
    method: a method spec ``<method>[@<value dtype>]`` (:func:`parse_method`): 'full' | 'qr' |
      'hash' | 'pep' | 'cerp' | 'magnitude', optionally '@float16' or '@int8' (default '@float32'), sized for
      tables packed with that value dtype.
    fraction: budget fraction in (0, 1].
    num_entities: N = users + items.
    reference_dim: d_ref (the full table's width; QR, hashing, PEP and CERP use it as their d).
    cerp_sparsity: CERP's target sparsity when choosing b.
    window: the allowed packed bytes as fractions of the budget.

  Returns:
    the :class:`Setting` (``method`` the bare method, ``value_dtype`` the dtype; a non-float32
    dtype adds ``pack.value_dtype`` to its overrides).

  Raises:
    BudgetError: no setting lands in the window (message says by how much).
    ValueError: unknown method or value dtype.
  """
  method, vdt = parse_method(method)
  setting = _solve_method(method, vdt, fraction, num_entities, reference_dim, cerp_sparsity,
                          window)
  if vdt == "float32":
    return setting
  return dataclasses.replace(setting, value_dtype=vdt,
                             overrides={**setting.overrides, "pack.value_dtype": vdt})


def _solve_method(method, vdt, fraction, num_entities, reference_dim, cerp_sparsity,
                  window) -> Setting:
  """:func:`solve` for a bare method and value dtype (the overrides without ``pack``)."""
  budget = budget_bytes(fraction, num_entities, reference_dim)
  n, d = num_entities, reference_dim
  spec = method_spec(method, vdt)
  if method == "full":
    dd, by = solve_full(budget, n, vdt)
    _check_window(spec, budget, by, by, fraction, window, f"d={dd}")
    return Setting(method, fraction, budget, {"model.embedding": "full", "model.dim": dd}, by, by,
                   None, f"d={dd}")
  if method == "qr":
    b, by = solve_qr(budget, n, d, vdt)
    q = baselines.qr_num_quotients(n, b)
    _check_window(spec, budget, by, by, fraction, window, f"b={b}")
    return Setting(method, fraction, budget, {"model.embedding": "qr", "model.dim": d,
                                               "model.bucket_size": b}, by, by, None,
                   f"b={b:,} (Q {q:,}×{d}, R {b:,}×{d})")
  if method == "hash":
    rows, by = solve_hash(budget, d, vdt)
    _check_window(spec, budget, by, by, fraction, window, f"B={rows}")
    return Setting(method, fraction, budget, {"model.embedding": "hash", "model.dim": d,
                                               "model.hash_rows": rows}, by, by, None,
                   f"B={rows:,} rows")
  if method == "pep":
    s, nnz, hi, exact = solve_pep(budget, n, d, vdt)
    _check_window(spec, budget, exact, hi, fraction, window, f"s={s}")
    return Setting(method, fraction, budget, {"model.embedding": "pep", "model.dim": d,
                                               "target_sparsities": (s,)}, hi, exact, nnz,
                   f"s={s:.4f} of N·d ({nnz:,} non-zeros)")
  if method == "magnitude":
    return _magnitude_setting(budget, fraction, n, d, vdt, window)
  for sp in _cerp_sparsities(cerp_sparsity, vdt):
    b, s, nnz, hi, lo = solve_cerp(budget, n, d, sp, vdt)
    if lo >= window[0] * budget:
      break
  _check_window(spec, budget, lo, hi, fraction, window, f"b={b}, s={s}")
  return Setting(method, fraction, budget, {"model.embedding": "cerp", "model.dim": d,
                                             "model.bucket_size": b, "target_sparsities": (s,)},
                 hi, lo, nnz, f"b={b:,} s={s:.4f} of 2bd ({nnz:,} non-zeros)")


def _magnitude_setting(budget, fraction, n, d, vdt, window) -> Setting:
  """Magnitude pruning sized exactly as PEP (:func:`solve_pep`): the same non-zeros n of the
  element-sparse ``[N, d]`` table. The run's model is the trained full table at d (``model.embedding
  = 'full'``); ``target_sparsities = (s,)`` records n (``int((1 − s)·N·d) = n``)."""
  s, nnz, hi, exact = solve_pep(budget, n, d, vdt)
  _check_window(method_spec("magnitude", vdt), budget, exact, hi, fraction, window, f"s={s}")
  return Setting("magnitude", fraction, budget, {"model.embedding": "full", "model.dim": d,
                                                 "target_sparsities": (s,)}, hi, exact, nnz,
                 f"s={s:.4f} of N·d ({nnz:,} non-zeros), m on validation")


def _cerp_sparsities(cerp_sparsity: float, value_dtype: str) -> list:
  """Sparsities CERP's b is sized at, first to last until the worst split lands in the window:
  ``cerp_sparsity`` alone for float32; for float16 / int8 also 0.1, 0.2, … below it (with 1–2-byte
  values a bitmap's 1/8 byte per entry weighs more, and the worst split of the non-zeros over P
  and Q spans more than the window near 0.5; denser tables narrow it)."""
  if value_dtype == "float32":
    return [cerp_sparsity]
  return [round(cerp_sparsity - 0.1 * k, 6) for k in range(10) if cerp_sparsity - 0.1 * k > 0]


def reference_setting(num_entities: int, reference_dim: int,
                      dim: Optional[int] = None) -> Setting:
  """An uncompressed float32 full table (the frontier's marker; not held to a budget window).

  Args:
    num_entities: N.
    reference_dim: d_ref, the width budgets are fractions of.
    dim: the table's width (None: d_ref). ``budget_fraction`` is its share of the d_ref table's
      bytes (1.0 at d_ref), ``budget_bytes`` its own full-table bytes.
  """
  dim = reference_dim if dim is None else int(dim)
  budget = packing.full_table_bytes(num_entities, dim)
  by = dense_bytes([("E", num_entities, dim)])
  fraction = 1.0 if dim == reference_dim else budget / packing.full_table_bytes(num_entities,
                                                                                reference_dim)
  return Setting("full", fraction, budget, {"model.embedding": "full", "model.dim": dim}, by,
                 by, None, f"d={dim} (reference)", reference=True)


def solve_all(methods: Sequence[str], fractions: Sequence[float], num_entities: int,
              reference_dim: int, *, cerp_sparsity: float = 0.5,
              window: Sequence[float] = (0.9, 1.0)) -> list[Setting]:
  """:func:`solve` for every (method spec, fraction), methods outer, fractions ascending."""
  return [solve(m, f, num_entities, reference_dim, cerp_sparsity=cerp_sparsity, window=window)
          for m in methods for f in sorted(fractions)]


def markdown_table(settings: Sequence[Setting]) -> str:
  """The solver's table: method × budget → settings and predicted packed bytes."""
  lines = ["| method | budget | budget bytes | setting | predicted bytes | of budget |",
           "|---|---|---|---|---|---|"]
  for s in settings:
    pred = (f"{s.predicted_bytes:,}" if s.predicted_min_bytes == s.predicted_bytes else
            f"{s.predicted_min_bytes:,} – {s.predicted_bytes:,}")
    share = (f"{s.predicted_bytes / s.budget_bytes:.2%}" if s.predicted_min_bytes ==
             s.predicted_bytes else f"{s.predicted_min_bytes / s.budget_bytes:.2%} – "
             f"{s.predicted_bytes / s.budget_bytes:.2%}")
    if s.reference:  # not held to a window: the full table plus the container's header
      budget, share = "reference", "(full table)"
    else:
      budget = f"{s.budget_fraction:.1%}"
    lines.append(f"| {s.spec} | {budget} | {s.budget_bytes:,} | {s.summary} | {pred} | {share} |")
  return "\n".join(lines)
