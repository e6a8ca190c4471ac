"""The budget solver: every (method, budget) measured in [90 %, 100 %] of the packed file."""

import numpy as np
import pytest

from cerp_jax import baselines
from cerp_jax import budget as B
from cerp_jax import embeddings as E
from cerp_jax import packing
from cerp_jax import pruning
from conftest import packed_len, sparse_table

ELEMENT_SPARSE = ("pep", "magnitude")  # an element-sparse [N, d_ref] table

def test_budget_bytes_and_reference():
  assert B.budget_bytes(0.25, 70839, 128) == int(0.25 * (70839 * 128 * 4 + 16))
  ref = B.reference_setting(320, 32)
  assert ref.reference and ref.overrides == {"model.embedding": "full", "model.dim": 32}
  assert ref.predicted_bytes == packed_len({"E": np.ones((320, 32), np.float32)})


def test_sparsity_for_matches_pruning_budgets():
  for entries in (7552, 9_067_392, 256_000):
    for n in (0, 1, 1234, entries // 3, entries - 1):
      s = B.sparsity_for(n, entries)
      got = int(pruning.budgets([s], entries)[0]) if 0 < s < 1 else int((1 - s) * entries)
      assert got <= n and n - got <= 2


def _meta_for(setting: B.Setting, n: int) -> packing.PackedMeta:
  """The meta eval.py writes for a run of this setting (U = n // 3 users, the rest items)."""
  o = setting.overrides
  m, d, b = _packed_method(setting), o["model.dim"], o.get("model.bucket_size", 0)
  kw = dict(method=m, backbone="lightgcn", num_users=n // 3, num_items=n - n // 3,
            item_offset=n // 3, dim=d)
  if m == "cerp":
    kw.update(combine="sum", bucket_size=b, quotient_divisor=-(-n // b))
  elif m == "qr":
    kw.update(combine="mult", bucket_size=b, quotient_divisor=b)
  elif m == "hash":
    kw.update(combine="sum", bucket_size=o["model.hash_rows"], num_hashes=2, hash_seed=2 ** 40)
  return packing.PackedMeta(**kw, value_dtype=setting.value_dtype)


def _packed_method(setting: B.Setting) -> str:
  """The method of the file a run packs (magnitude packs PEP's format)."""
  return "pep" if setting.method == "magnitude" else setting.overrides["model.embedding"]


def _realise(setting: B.Setting, n: int, split: float = 0.5, nonzeros=None) -> dict:
  """Tables with the shapes (and non-zero counts) a run of this setting packs."""
  o, d = setting.overrides, setting.overrides["model.dim"]
  m = _packed_method(setting)
  if m == "full":
    return {"E": sparse_table(n, d, n * d)}
  if m == "qr":
    b = o["model.bucket_size"]
    return {"Q": sparse_table(baselines.qr_num_quotients(n, b), d, baselines.qr_num_quotients(n, b) * d),
            "R": sparse_table(b, d, b * d)}
  if m == "hash":
    r = o["model.hash_rows"]
    return {"T": sparse_table(r, d, r * d)}
  nnz = setting.nonzeros if nonzeros is None else nonzeros
  if m == "pep":
    return {"E": sparse_table(n, d, nnz)}
  b = o["model.bucket_size"]
  a = min(max(int(split * nnz), nnz - b * d), b * d)
  return {"P": sparse_table(b, d, a), "Q": sparse_table(b, d, nnz - a)}


@pytest.mark.parametrize("n,d_ref,fractions", [
    (320, 32, (0.2, 0.4)),                  # configs/sweep_test.py on the tests' synthetic data
    (140, 32, (0.2, 0.4)),
    (3000, 64, (0.05, 0.1, 0.25)),       # (2.5 %: QR needs ≥ 2√N rows, 3.7 %)
])
@pytest.mark.parametrize("method", B.METHODS)
def test_solver_meets_every_budget_measured(n, d_ref, fractions, method):
  """Pack tables of exactly the solved shapes / non-zero budgets: measured bytes in [90 %, 100 %]."""
  for f in fractions:
    s = B.solve(method, f, n, d_ref)
    assert s.budget_bytes == B.budget_bytes(f, n, d_ref)
    assert 0.9 * s.budget_bytes <= s.predicted_min_bytes <= s.predicted_bytes <= s.budget_bytes
    splits = (0.5, 0.3, 0.0, 1.0) if method == "cerp" else (0.5,)
    for split in splits:
      measured = packed_len(_realise(s, n, split), _meta_for(s, n))  # the file eval.py writes
      assert 0.9 * s.budget_bytes <= measured <= s.budget_bytes, (method, f, split, measured)
      if method in E.PRUNED_EMBEDDINGS + ELEMENT_SPARSE:
        assert s.predicted_min_bytes <= measured <= s.predicted_bytes
      else:
        assert measured == s.predicted_bytes
    if method in E.PRUNED_EMBEDDINGS + ELEMENT_SPARSE:
      # a snapshot can only have fewer non-zeros than the budget: still within the budget
      for fewer in (s.nonzeros - 1, int(0.98 * s.nonzeros)):
        assert packed_len(_realise(s, n, nonzeros=fewer)) <= s.budget_bytes


@pytest.mark.parametrize("n,d_ref,fractions", [(320, 32, (0.1, 0.2)), (3000, 64, (0.05, 0.1, 0.2))])
@pytest.mark.parametrize("value_dtype", ["float16", "int8"])
@pytest.mark.parametrize("method", B.METHODS)
def test_solver_meets_every_budget_measured_quantized(n, d_ref, fractions, method, value_dtype):
  """``<method>@<value dtype>``: the file eval.py packs in that dtype lands in [90 %, 100 %]."""
  for f in fractions:
    s = B.solve(f"{method}@{value_dtype}", f, n, d_ref)
    assert (s.method, s.value_dtype, s.spec) == (method, value_dtype, f"{method}@{value_dtype}")
    assert s.overrides["pack.value_dtype"] == value_dtype
    assert 0.9 * s.budget_bytes <= s.predicted_min_bytes <= s.predicted_bytes <= s.budget_bytes
    for split in ((0.5, 0.3, 0.0, 1.0) if method == "cerp" else (0.5,)):
      measured = packed_len(_realise(s, n, split), _meta_for(s, n))
      assert 0.9 * s.budget_bytes <= measured <= s.budget_bytes, (method, f, split, measured)
      assert s.predicted_min_bytes <= measured <= s.predicted_bytes


def test_method_specs():
  assert B.parse_method("full") == ("full", "float32")
  assert B.parse_method("qr@float16") == ("qr", "float16")
  assert B.method_spec("cerp", "int8") == "cerp@int8" and B.method_spec("pep") == "pep"
  for bad in ("full@int4", "dhe@int8", "full@"):
    with pytest.raises(ValueError, match="expected <method>"):
      B.parse_method(bad)
  n = 29858 + 40981  # Gowalla: int8 fits ~4× the width of float32 at the same bytes
  assert [B.solve("full@int8", f, n, 128).overrides["model.dim"] for f in (0.025, 0.05, 0.1)] == [
      8, 21, 47]
  assert B.solve("full@float16", 0.1, n, 128).overrides["model.dim"] == 25
  assert "pack.value_dtype" not in B.solve("full", 0.1, n, 128).overrides


def test_gowalla_settings_are_sane():
  n = 29858 + 40981
  settings = B.solve_all(B.METHODS, (0.025, 0.05, 0.1, 0.25), n, 128)
  by = {(s.method, s.budget_fraction): s for s in settings}
  assert [by["full", f].overrides["model.dim"] for f in (0.025, 0.05, 0.1, 0.25)] == [3, 6, 12, 31]
  for f in (0.025, 0.05, 0.1, 0.25):
    cerp = by["cerp", f]
    b = cerp.overrides["model.bucket_size"]
    assert b >= E.smallest_valid_bucket_size(n)
    (s,) = cerp.overrides["target_sparsities"]
    assert abs(s - 0.5) < 0.01  # sized at sweep.cerp_sparsity
    assert int(pruning.budgets([s], 2 * b * 128)[0]) == cerp.nonzeros
    (sp,) = by["pep", f].overrides["target_sparsities"]
    assert int(pruning.budgets([sp], n * 128)[0]) == by["pep", f].nonzeros
    assert by["qr", f].overrides["model.bucket_size"] ** 2 >= n  # b ≥ √N
  assert all(0.9 <= s.fill <= 1.0 for s in settings)
  assert len(B.markdown_table(settings).splitlines()) == 2 + len(settings)


def test_infeasible_budgets_are_refused_clearly():
  # d_ref = 16, 25 %: d = 4 does not fit (container overhead), d = 3 is 75 % of the budget
  with pytest.raises(B.BudgetError, match=r"full at budget 0.25 .* outside \[90%, 100%\]"):
    B.solve("full", 0.25, 320, 16)
  with pytest.raises(B.BudgetError, match="qr: the smallest QR tables"):
    B.solve("qr", 0.01, 320, 32)
  with pytest.raises(B.BudgetError, match="full: even d=1"):
    B.solve("full", 0.001, 320, 32)
  with pytest.raises(ValueError, match="method='dhe'"):
    B.solve("dhe", 0.1, 320, 32)


def test_cerp_sparsity_knob_moves_b():
  lo = B.solve("cerp", 0.1, 3000, 64, cerp_sparsity=0.5)
  hi = B.solve("cerp", 0.1, 3000, 64, cerp_sparsity=0.8)
  assert hi.overrides["model.bucket_size"] > lo.overrides["model.bucket_size"]
  assert hi.overrides["target_sparsities"][0] > lo.overrides["target_sparsities"][0]


@pytest.mark.parametrize("value_dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("n,d_ref,fractions", [(320, 32, (0.1, 0.2)),
                                               (29858 + 40981, 128, (0.025, 0.05, 0.1))])
def test_magnitude_is_sized_as_pep(n, d_ref, fractions, value_dtype):
  """magnitude: PEP's non-zeros, sparsity and predicted bytes; the run's model is the full table."""
  for f in fractions:
    pep = B.solve(f"pep@{value_dtype}", f, n, d_ref)
    mag = B.solve(f"magnitude@{value_dtype}", f, n, d_ref)
    assert (mag.method, mag.value_dtype) == ("magnitude", value_dtype)
    assert mag.spec == B.method_spec("magnitude", value_dtype)
    assert (mag.nonzeros, mag.budget_bytes, mag.predicted_bytes, mag.predicted_min_bytes) == (
        pep.nonzeros, pep.budget_bytes, pep.predicted_bytes, pep.predicted_min_bytes)
    assert mag.overrides["target_sparsities"] == pep.overrides["target_sparsities"]
    assert mag.overrides["model.embedding"] == "full" and mag.overrides["model.dim"] == d_ref
    assert mag.overrides.get("pack.value_dtype") == pep.overrides.get("pack.value_dtype")
    # the exact packed size of a magnitude mask's nnz entries is PEP's
    assert packed_len(_realise(mag, n), _meta_for(mag, n)) == mag.predicted_min_bytes


def test_reference_at_another_width():
  ref = B.reference_setting(320, 32, 16)
  assert ref.reference and ref.overrides == {"model.embedding": "full", "model.dim": 16}
  assert ref.budget_bytes == packing.full_table_bytes(320, 16)
  assert ref.budget_fraction == pytest.approx(packing.full_table_bytes(320, 16) /
                                              packing.full_table_bytes(320, 32))
  assert B.reference_setting(320, 32).budget_fraction == 1.0
