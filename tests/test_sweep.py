"""sweep.py over the tiny config: all files, one row per (method, budget), measured bytes within
each budget, the full table beating most-popular, a rerun that skips finished runs, and magnitude
pruning of the trained reference (m chosen on validation, nothing trained)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cerp_jax import budget as budget_lib
from cerp_jax import finalize
from cerp_jax import magnitude as magnitude_lib
from cerp_jax import packing
from cerp_jax import sweep as S
from cerp_jax import train as train_lib
from conftest import REPO, synthetic_interactions, write_lightgcn


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory):
  from configs import sweep_test
  train, test = synthetic_interactions(num_users=200, num_items=120)  # N = 320
  c = sweep_test.get_config()
  c.data.path = str(write_lightgcn(tmp_path_factory.mktemp("data") / "syn", train, test))
  return c


@pytest.fixture(scope="module")
def swept(sweep_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("sweep"))
  out = S.run_sweep(sweep_config, workdir)
  return workdir, out


def _csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_sweep_writes_all_files_one_row_per_method_and_budget(swept, sweep_config):
  workdir, out = swept
  for name in ("results.csv", "results.md", "frontier.png", "runs.csv", "plan.json", "plan.md",
               "most_popular.json"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, "frontier.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  rows = _csv(os.path.join(workdir, "results.csv"))
  sc = sweep_config.sweep
  budgeted = [(r["method"], float(r["budget_fraction"])) for r in rows if r["reference"] == "False"]
  assert sorted(budgeted) == sorted((m, b) for m in sc.methods for b in sc.budgets)
  assert [r["method"] for r in rows if r["reference"] == "True"] == ["full"]
  assert all(r["status"] == "ok" for r in rows)
  md = open(os.path.join(workdir, "results.md")).read()
  for label in ("full table (smaller d)", "QR", "hashing", "PEP", "CERP",
                "magnitude pruning (no retraining)", "most popular",
                "Recall@20", "NDCG@20", "train time"):
    assert label in md
  assert len(_csv(os.path.join(workdir, "runs.csv"))) == len(out["records"]) == \
      (len(sc.methods) * len(sc.budgets) + 1) * len(sc.seeds) * len(sc.lrs)


def test_every_run_measured_within_its_budget(swept, sweep_config):
  workdir, out = swept
  lo, hi = sweep_config.sweep.window
  for rec in out["records"]:
    rdir = os.path.join(workdir, "runs", rec["name"])
    with open(os.path.join(rdir, "eval.json")) as f:
      (row,) = json.load(f)["results"]
    # the packer's file, measured on disk, is what the sweep reports
    assert os.path.getsize(row["packed_file"]) == row["packed_bytes"] == rec["packed_bytes"]
    if rec["reference"]:
      continue
    assert lo * rec["budget_bytes"] <= rec["packed_bytes"] <= hi * rec["budget_bytes"], rec["name"]
    assert rec["within_window"]
    pred = rec["setting"]
    assert rec["packed_bytes"] <= pred["predicted_bytes"]  # the solver's bound holds
    if rec["method"] in ("full", "qr", "hash"):
      assert rec["packed_bytes"] == pred["predicted_bytes"]  # dense tables: exact


def test_runs_follow_the_equal_protocol(swept, sweep_config):
  workdir, out = swept
  for rec in out["records"]:
    with open(os.path.join(workdir, "runs", rec["name"], "config.json")) as f:
      rc = json.load(f)
    assert "sweep" not in rc
    assert rc["retrain"] == json.loads(sweep_config.retrain.to_json())  | {"lr": rec["lr"]}
    assert rc["eval"] == json.loads(sweep_config.eval.to_json())
    embedding = "full" if rec["method"] == "magnitude" else rec["method"]  # prunes the full table
    assert rc["seed"] == rec["seed"] and rc["model"]["embedding"] == embedding
    assert rc["prune"]["gamma_init"] == (0.0 if rec["method"] == "pep" else
                                         sweep_config.prune.gamma_init)
    for k, v in rec["setting"]["overrides"].items():
      node = rc
      for part in k.split("."):
        node = node[part]
      assert node == v


def test_full_table_beats_most_popular(swept):
  _, out = swept
  pop = out["most_popular"]
  for row in out["rows"]:
    if row["method"] == "full":
      assert row["recall@20"] > pop["recall@20"] and row["ndcg@20"] > pop["ndcg@20"], row


def test_rerun_skips_finished_runs(swept, sweep_config, monkeypatch):
  workdir, _ = swept
  before = {n: open(os.path.join(workdir, n)).read() for n in ("results.csv", "results.md")}
  calls = []

  def boom(*a, **kw):
    calls.append(a)
    raise AssertionError("a finished run was trained or evaluated again")

  monkeypatch.setattr(train_lib, "train_and_evaluate", boom)
  monkeypatch.setattr(finalize, "evaluate_workdir", boom)
  monkeypatch.setattr(magnitude_lib, "prune_workdir", boom)
  S.run_sweep(sweep_config, workdir)
  assert not calls
  for n, text in before.items():
    assert open(os.path.join(workdir, n)).read() == text


def test_rerun_redoes_only_an_unfinished_run(swept, sweep_config, monkeypatch):
  workdir, out = swept
  name = next(r["name"] for r in out["records"] if r["method"] == "qr")
  os.remove(os.path.join(workdir, "runs", name, "sweep_run.json"))
  trained = []
  real = train_lib.train_and_evaluate

  def counting(config, wd):
    trained.append(os.path.basename(wd))
    return real(config, wd)  # resumes: its checkpoints say it has finished

  monkeypatch.setattr(train_lib, "train_and_evaluate", counting)
  S.run_sweep(sweep_config, workdir)
  assert trained == [name]
  assert os.path.exists(os.path.join(workdir, "runs", name, "sweep_run.json"))


def test_run_with_other_settings_refused(swept, sweep_config):
  workdir, out = swept
  rec = next(r for r in out["records"] if r["method"] == "hash")
  s = budget_lib.Setting(**{**rec["setting"], "overrides": {
      **rec["setting"]["overrides"], "model.hash_rows": 7}})
  with pytest.raises(ValueError, match="holds a finished run with settings"):
    S.run_one(sweep_config, s, rec["seed"], rec["lr"], workdir)


def test_finished_run_with_another_protocol_refused(swept, sweep_config):
  workdir, _ = swept
  c = sweep_config.copy_and_resolve_references()
  c.retrain.max_epochs += 1
  with pytest.raises(ValueError, match="different config"):
    S.run_sweep(c, workdir)


def test_bad_sweep_config_refused(sweep_config):
  c = sweep_config.copy_and_resolve_references()
  c.sweep.methods = ("full", "dhe")
  with pytest.raises(ValueError, match="config.sweep.methods"):
    S.validate_sweep_config(c)
  c = sweep_config.copy_and_resolve_references()
  c.sweep.budgets = (0.2, 1.5)
  with pytest.raises(ValueError, match="config.sweep.budgets"):
    S.validate_sweep_config(c)


def test_cli_solve_only(sweep_config, tmp_path):
  r = subprocess.run([sys.executable, "sweep.py", "--config=configs/sweep_test.py",
                      f"--config.data.path={sweep_config.data.path}", "--solve_only",
                      f"--workdir={tmp_path / 'w'}"], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "| cerp | 20.0% |" in r.stdout and "| full | reference |" in r.stdout
  with open(tmp_path / "w" / "plan.json") as f:
    plan = json.load(f)
  assert plan["num_entities"] == 320 and len(plan["settings"]) == 13
  assert not (tmp_path / "w" / "runs").exists()


def test_pep_budgets_share_one_stage1(swept, sweep_config):
  workdir, out = swept
  shared = [d for d in os.listdir(os.path.join(workdir, "runs")) if d.startswith("pep_stage1_")]
  assert len(shared) == 1
  with open(os.path.join(workdir, "runs", shared[0], "prune", "summary.json")) as f:
    summary = json.load(f)
  pep = [r for r in out["records"] if r["method"] == "pep"]
  assert len(pep) == len(sweep_config.sweep.budgets)
  assert sorted(t["target_sparsity"] for t in summary["targets"]) == sorted(
      r["setting"]["overrides"]["target_sparsities"][0] for r in pep)
  for rec in pep:
    rdir = os.path.join(workdir, "runs", rec["name"])
    assert not os.path.exists(os.path.join(rdir, "prune"))  # retrained from the shared stage 1
    with open(os.path.join(rdir, "config.json")) as f:
      assert json.load(f)["prune_workdir"] == os.path.join(workdir, "runs", shared[0])
    assert 0 < rec["prune_seconds"] <= summary["seconds"]
  cerp = [r for r in out["records"] if r["method"] == "cerp"]  # a b per budget: each its own
  assert all(os.path.exists(os.path.join(workdir, "runs", r["name"], "prune")) for r in cerp)


def test_report_only_trains_nothing_and_reports_finished_runs(swept, sweep_config, monkeypatch,
                                                              tmp_path):
  workdir, out = swept

  def boom(*a, **kw):
    raise AssertionError("report_only trained or evaluated a run")

  monkeypatch.setattr(train_lib, "train_and_evaluate", boom)
  monkeypatch.setattr(finalize, "evaluate_workdir", boom)
  c = sweep_config.copy_and_resolve_references()
  c.sweep.budgets = tuple(c.sweep.budgets) + (0.3,)  # a budget never run: left out, not trained
  res = S.run_sweep(c, workdir, report_only=True)
  assert len(res["records"]) == len(out["records"])
  md = open(os.path.join(workdir, "results.md")).read()
  assert "30.0%" in md  # the pivot has the unrun budget's column, with '–' cells
  with pytest.raises(ValueError, match="no finished run"):
    S.run_sweep(c, str(tmp_path / "empty"), report_only=True)


def test_new_lr_reuses_the_finished_shared_stage1(swept, sweep_config, monkeypatch):
  workdir, _ = swept
  c = sweep_config.copy_and_resolve_references()
  c.sweep.methods = ("pep",)
  c.sweep.reference = False
  c.sweep.lrs = (5e-3,) + tuple(c.sweep.lrs)  # a new rate first: stage 1 does not depend on it
  stages = []
  real = train_lib.train_and_evaluate

  def spy(config, wd):
    stages.append((config.stage, os.path.basename(wd)))
    return real(config, wd)

  monkeypatch.setattr(train_lib, "train_and_evaluate", spy)
  out = S.run_sweep(c, workdir)
  assert stages and all(stage == "retrain" for stage, _ in stages)  # no stage 1 again
  assert len([d for d in os.listdir(os.path.join(workdir, "runs"))
              if d.startswith("pep_stage1_")]) == 1
  assert {r["lr"] for r in out["records"]} == {5e-3, sweep_config.sweep.lrs[0]}


def test_int8_method_sized_trained_float32_and_packed_int8(sweep_config, tmp_path):
  """``full@int8``: solved for int8 bytes (wider d), trained in float32, packed int8 after training;
  eval.json has the float32 metrics and each quantization's change; results name the dtype."""
  c = sweep_config.copy_and_resolve_references()
  c.sweep.methods, c.sweep.budgets, c.sweep.reference = ("full@int8",), (0.2,), False
  out = S.run_sweep(c, str(tmp_path))
  (rec,) = out["records"]
  assert rec["name"].startswith("full@int8_b0.2000_") and rec["value_dtype"] == "int8"
  want = budget_lib.solve("full@int8", 0.2, 320, 32)
  assert want.overrides["model.dim"] > budget_lib.solve("full", 0.2, 320, 32).overrides["model.dim"]
  assert rec["packed_bytes"] == want.predicted_bytes and rec["within_window"]
  rdir = tmp_path / "runs" / rec["name"]
  assert json.loads((rdir / "config.json").read_text())["pack"]["value_dtype"] == "int8"
  (row,) = json.loads((rdir / "eval.json").read_text())["results"]
  assert row["value_dtype"] == "int8" and set(row["quantized"]) == {"float16", "int8"}
  q = row["quantized"]["int8"]
  assert q["packed_bytes"] == row["packed_bytes"] and q["recall@20"] == row["recall@20"]
  assert q["delta_recall@20"] == pytest.approx(row["recall@20"] - row["float32"]["recall@20"])
  assert row["float32"]["packed_bytes"] > row["quantized"]["float16"]["packed_bytes"] > \
      row["packed_bytes"]
  (res,) = _csv(tmp_path / "results.csv")
  assert (res["method"], res["value_dtype"]) == ("full", "int8")
  md = (tmp_path / "results.md").read_text()
  assert "full table (smaller d), int8" in md
  assert "Post-training quantization" in finalize.markdown_table(
      json.loads((rdir / "eval.json").read_text()))


def _magnitude_records(out):
  recs = [r for r in out["records"] if r["method"] == "magnitude"]
  assert recs
  return recs


def test_magnitude_prunes_the_reference_with_m_chosen_on_validation(swept, sweep_config):
  """Each budget: PEP's non-zeros of the trained reference table, m the best on validation among
  the feasible grid values, packed under the budget, evaluated from the packed file."""
  workdir, out = swept
  sc = sweep_config.sweep
  ref = next(r for r in out["records"] if r["reference"])
  ref_table = packing.unpack(os.path.join(workdir, "runs", ref["name"], "packed", "full.cerp"))["E"]
  n, d = ref_table.shape
  for rec in _magnitude_records(out):
    pep = budget_lib.solve("pep", rec["budget_fraction"], n, sc.reference_dim)
    assert rec["setting"]["nonzeros"] == pep.nonzeros and rec["reference_run"] == ref["name"]
    assert rec["min_per_row_grid"] == list(sc.magnitude_min_per_row)
    tried = [int(m) for m in rec["min_per_row_scores"]]
    assert tried == [m for m in sc.magnitude_min_per_row if n * m <= pep.nonzeros]
    best = max(rec["min_per_row_scores"].values())
    assert rec["min_per_row_scores"][str(rec["min_per_row"])] == pytest.approx(best, abs=1e-9)
    assert rec["valid_selection"] == pytest.approx(best, abs=1e-9)
    assert rec["packed_bytes"] <= rec["budget_bytes"] and rec["within_window"]
    rdir = os.path.join(workdir, "runs", rec["name"])
    ev = json.load(open(os.path.join(rdir, "eval.json")))
    (row,) = ev["results"]
    assert ev["magnitude"]["min_per_row"] == rec["min_per_row"]
    assert rec["recall@20"] == pytest.approx(row["recall@20"]) and rec["epochs"] == 0
    assert not os.path.exists(os.path.join(rdir, "retrain"))  # nothing trained
    pruned = packing.unpack(row["packed_file"])["E"]
    mask = magnitude_lib.magnitude_mask(ref_table, pep.nonzeros, rec["min_per_row"])
    np.testing.assert_array_equal(pruned != 0, mask)
    np.testing.assert_allclose(pruned, np.where(mask, ref_table, 0), rtol=1e-6, atol=0)
    assert rec["empty_rows"] == magnitude_lib.empty_rows(mask)
    assert packing.read_header(row["packed_file"]).method == "pep"  # PEP's format


def test_magnitude_without_its_reference_is_a_clear_error(sweep_config, tmp_path, monkeypatch):
  c = sweep_config.copy_and_resolve_references()
  c.sweep.methods, c.sweep.budgets, c.sweep.reference = ("magnitude",), (0.2,), False
  monkeypatch.setattr(magnitude_lib, "prune_workdir", lambda *a, **k: pytest.fail("ran"))
  with pytest.raises(ValueError, match=r"magnitude_b0.2000_seed0_lr0.01: its reference run "
                     r"full_reference_seed0_lr0.01 .* has not finished"):
    S.run_sweep(c, str(tmp_path))


@pytest.mark.parametrize("field,value", [
    ("magnitude_min_per_row", (0, -1)), ("magnitude_min_per_row", (1, 33)),
    ("magnitude_min_per_row", ()), ("magnitude_min_per_row", (0.5,)),
    ("extra_reference_dims", (32,)), ("extra_reference_dims", (0,)),
    ("extra_reference_dims", (16, 16))])
def test_bad_magnitude_and_reference_fields_refused(sweep_config, field, value):
  c = sweep_config.copy_and_resolve_references()
  c.sweep[field] = value
  with pytest.raises(ValueError, match=f"config.sweep.{field}"):
    S.validate_sweep_config(c)


def test_extra_reference_dims_train_more_references(swept, sweep_config):
  """A reference at d = 16 besides d_ref = 32: its own run, a second reference row and line; the
  finished magnitude runs are skipped."""
  workdir, _ = swept
  c = sweep_config.copy_and_resolve_references()
  c.sweep.methods, c.sweep.extra_reference_dims = ("magnitude",), (16,)
  out = S.run_sweep(c, workdir)
  refs = sorted((r["name"], r["setting"]["overrides"]["model.dim"]) for r in out["records"]
                if r["reference"])
  assert refs == [("full_reference_d16_seed0_lr0.01", 16), ("full_reference_seed0_lr0.01", 32)]
  rows = _csv(os.path.join(workdir, "results.csv"))
  assert sorted(float(r["budget_fraction"]) for r in rows if r["reference"] == "True")[1] == 1.0
  assert len([r for r in rows if r["reference"] == "True"]) == 2
  md = open(os.path.join(workdir, "results.md")).read()
  assert "Full table d=16 (reference" in md and "Full table d=32 (reference" in md


def _records(workdir, config=None):
  """records.jsonl of ``workdir`` (every finished run there); with ``config``, rewritten by a report
  with it first and only that config's runs kept (tests before ran others in the shared workdir)."""
  names = None
  if config is not None:
    names = {r["name"] for r in S.run_sweep(config, workdir, report_only=True)["records"]}
  with open(os.path.join(workdir, S.RECORDS_FILE), encoding="utf-8") as f:
    recs = [json.loads(line) for line in f]
  return [r for r in recs if names is None or r["name"] in names]


def _write_records(path, recs):
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(r) + "\n" for r in recs))
  return str(path)


def _no_training(monkeypatch):
  def boom(*a, **kw):
    raise AssertionError("an imported run was trained or evaluated")
  monkeypatch.setattr(train_lib, "train_and_evaluate", boom)
  monkeypatch.setattr(finalize, "evaluate_workdir", boom)
  monkeypatch.setattr(magnitude_lib, "prune_workdir", boom)


def _first_trained(monkeypatch):
  """Makes the first run that would train stop the sweep; returns the list of its folder name."""
  trained = []

  def stop(config, wd):
    trained.append(os.path.basename(wd))
    raise KeyboardInterrupt

  monkeypatch.setattr(train_lib, "train_and_evaluate", stop)
  return trained


def test_records_hold_every_finished_run_of_the_workdir(swept, sweep_config):
  workdir, out = swept
  recs = _records(workdir, sweep_config)
  names = sorted(r["name"] for r in out["records"])
  assert sorted(r["name"] for r in recs) == names
  assert all(r["config"] == json.load(open(os.path.join(workdir, "runs", r["name"], "config.json")))
             for r in recs)
  every = {r["name"] for r in _records(workdir)}
  assert every >= set(names) and every == {
      n for n in os.listdir(os.path.join(workdir, "runs"))
      if os.path.exists(os.path.join(workdir, "runs", n, "sweep_run.json"))}
  c = sweep_config.copy_and_resolve_references()
  c.sweep.methods = ("qr",)  # a narrower command's report keeps the others' records
  S.run_sweep(c, workdir, report_only=True)
  assert {r["name"] for r in _records(workdir)} == every


def test_records_continue_the_sweep_in_a_new_workdir(swept, sweep_config, monkeypatch, tmp_path):
  workdir, _ = swept
  recs = _records(workdir, sweep_config)
  path = _write_records(tmp_path / "kept.jsonl", recs)
  _no_training(monkeypatch)
  new = str(tmp_path / "new")
  res = S.run_sweep(sweep_config, new, import_from=path)  # every run finished: nothing trains
  assert len(res["records"]) == len(recs)
  assert all(r["imported_from"].startswith(path + ":") for r in res["records"])
  assert open(os.path.join(new, "results.csv")).read() == \
      open(os.path.join(workdir, "results.csv")).read()
  assert [r["name"] for r in _records(new)] == [r["name"] for r in recs]
  # imported again from there: where it came from is kept
  again = S.run_sweep(sweep_config, str(tmp_path / "third"), import_from=os.path.join(
      new, S.RECORDS_FILE))
  assert all("(before: " + path + ":" in r["imported_from"] for r in again["records"])


def test_records_import_only_planned_runs_and_the_rest_trains(swept, sweep_config, monkeypatch,
                                                              tmp_path):
  workdir, _ = swept
  recs = _records(workdir, sweep_config)
  qr = next(r for r in recs if r["method"] == "qr")
  path = _write_records(tmp_path / "kept.jsonl", [r for r in recs if r is not qr])
  trained = _first_trained(monkeypatch)
  with pytest.raises(KeyboardInterrupt):
    S.run_sweep(sweep_config, str(tmp_path / "new"), import_from=path)
  assert trained == [qr["name"]]
  c = sweep_config.copy_and_resolve_references()
  c.sweep.methods = ("full",)  # records of methods outside the plan are skipped
  _no_training(monkeypatch)
  res = S.run_sweep(c, str(tmp_path / "full_only"), import_from=path)
  assert {r["method"] for r in res["records"]} == {"full"}


def test_records_missing_some_metrics_report_beside_full_ones(swept, sweep_config, monkeypatch,
                                                             tmp_path):
  workdir, _ = swept
  recs = _records(workdir, sweep_config)
  qr = [r for r in recs if r["method"] == "qr"]
  for r in qr:  # as a record rebuilt from a results table: @20 and @50 only
    for k in [k for k in r if "@" in k and not k.endswith(("@20", "@50"))]:
      del r[k]
  _no_training(monkeypatch)
  res = S.run_sweep(sweep_config, str(tmp_path / "new"), import_from=_write_records(
      tmp_path / "kept.jsonl", recs))
  rows = {(r["method"], r["budget_fraction"]): r for r in res["rows"] if not r["reference"]}
  assert rows[("qr", 0.2)]["hitrate@10"] is None and rows[("qr", 0.2)]["recall@20"] is not None
  assert rows[("full", 0.2)]["hitrate@10"] is not None


def test_records_with_other_settings_or_config_refused_before_anything_is_written(
    swept, sweep_config, tmp_path):
  workdir, _ = swept
  recs = _records(workdir, sweep_config)
  new = tmp_path / "new"

  def refused(recs, match, name="x.jsonl", config=sweep_config):
    path = _write_records(tmp_path / name, recs)
    with pytest.raises(ValueError, match=match):
      S.run_sweep(config, str(new), import_from=path)
    assert not os.path.exists(new / "runs") and not os.path.exists(new / "plan.json")

  changed = [dict(r) for r in recs]
  changed[1]["config"] = {**changed[1]["config"], "retrain": {**changed[1]["config"]["retrain"],
                                                              "max_epochs": 999}}
  refused(changed, rf"x.jsonl:2: run {recs[1]['name']} was trained with another config "
          r"\(retrain.max_epochs: 999 → 8\)")
  changed = [dict(r) for r in recs]
  changed[1]["config"] = {**changed[1]["config"], "pack": {**changed[1]["config"]["pack"],
                                                           "value_dtype": "int8"}}
  refused(changed, r"x.jsonl:2: .* another config \(pack.value_dtype: 'int8' → 'float32'\)")
  changed = [dict(r) for r in recs]
  changed[0]["setting"] = {**changed[0]["setting"],
                           "overrides": {**changed[0]["setting"]["overrides"], "model.dim": 1}}
  refused(changed, rf"x.jsonl:1: run {recs[0]['name']} was recorded with settings model.dim: 1 → ")
  c = sweep_config.copy_and_resolve_references()
  c.sweep.magnitude_min_per_row = (0, 1)
  mag = next(i for i, r in enumerate(recs) if r["method"] == "magnitude")
  refused(recs, rf"x.jsonl:{mag + 1}: run .* was recorded with m chosen among \[0, 1, 2, 4, 8\], "
          r"not \[0, 1\]", config=c)
  refused(recs + recs[:1], rf"x.jsonl:{len(recs) + 1}: run {recs[0]['name']} again \(first at "
          "line 1\)")
  bad = tmp_path / "c.jsonl"
  for text, match in ((json.dumps(recs[0]) + "\n\n{not json\n", r"c.jsonl:3: not a JSON record"),
                      (json.dumps({"name": recs[0]["name"]}) + "\n", r"c.jsonl:1: not a sweep run"),
                      (json.dumps({**recs[0], "setting": "x"}) + "\n", r"c.jsonl:1: not a sweep run")):
    bad.write_text(text)
    with pytest.raises(ValueError, match=match):
      S.run_sweep(sweep_config, str(new), import_from=str(bad))
  bad.write_bytes(b"\x1f\x8b\x08\x00\xff")  # gzip
  with pytest.raises(ValueError, match=r"--import_records=.*c.jsonl: cannot read it as a text file"):
    S.run_sweep(sweep_config, str(new), import_from=str(bad))
  with pytest.raises(ValueError, match=r"--import_records=.*missing.jsonl: cannot read it"):
    S.run_sweep(sweep_config, str(new), import_from=str(tmp_path / "missing.jsonl"))
  assert not os.path.exists(new / "runs")
  # a folder here with another config: refused with the file's line, nothing imported
  (new / "runs" / recs[1]["name"]).mkdir(parents=True)
  with open(new / "runs" / recs[1]["name"] / "config.json", "w") as f:
    json.dump({**recs[1]["config"], "seed": 12345}, f)
  with pytest.raises(ValueError, match=rf"x.jsonl:2: run {recs[1]['name']} has a folder in .* with "
                     r"another config \(seed: 12345 → 0\)"):
    S.run_sweep(sweep_config, str(new), import_from=_write_records(tmp_path / "x.jsonl", recs))
  assert os.listdir(new / "runs") == [recs[1]["name"]]


def test_reference_of_a_magnitude_run_still_to_do_trains_instead_of_importing(
    swept, sweep_config, monkeypatch, tmp_path):
  workdir, _ = swept
  recs = [r for r in _records(workdir, sweep_config) if r["method"] != "magnitude"]
  path = _write_records(tmp_path / "kept.jsonl", recs)
  trained = _first_trained(monkeypatch)
  with pytest.raises(KeyboardInterrupt):
    S.run_sweep(sweep_config, str(tmp_path / "new"), import_from=path)
  assert trained == ["full_reference_seed0_lr0.01"]  # every other run was imported
  # imported by a command without magnitude, then asked for magnitude: a clear error
  c = sweep_config.copy_and_resolve_references()
  c.sweep.methods = tuple(m for m in c.sweep.methods if m != "magnitude")
  _no_training(monkeypatch)
  S.run_sweep(c, str(tmp_path / "later"), import_from=path)
  with pytest.raises(ValueError, match=r"its reference run full_reference_seed0_lr0.01 is finished "
                     r"in .* \(imported from .*kept.jsonl:\d+\) but its trained table is not there"):
    S.run_sweep(sweep_config, str(tmp_path / "later"))


def test_runs_another_process_holds_are_left_to_it(swept, sweep_config, monkeypatch):
  """Two sweep processes on one workdir share it run by run: a run whose lock another process
  holds is skipped (not trained twice, not reported), and a rerun later picks it up."""
  from cerp_jax import runlock  # pylint: disable=g-import-not-at-top
  workdir, out = swept
  name = next(r["name"] for r in out["records"] if r["method"] == "hash")
  rdir = os.path.join(workdir, "runs", name)
  os.remove(os.path.join(rdir, "sweep_run.json"))
  trained = []
  real = train_lib.train_and_evaluate

  def counting(config, wd):
    trained.append(os.path.basename(wd))
    return real(config, wd)

  monkeypatch.setattr(train_lib, "train_and_evaluate", counting)
  with runlock.hold(rdir, name=S.RUN_LOCK):  # the other process, mid-run
    res = S.run_sweep(sweep_config, workdir)
  assert not trained and name not in {r["name"] for r in res["records"]}
  assert len(res["records"]) == len(out["records"]) - 1
  with runlock.hold(rdir):  # an older sweep process holds only train.py's lock: the same
    res = S.run_sweep(sweep_config, workdir)
  assert trained == [name] and name not in {r["name"] for r in res["records"]}
  trained.clear()
  res = S.run_sweep(sweep_config, workdir)  # the other process gone: the run resumes here
  assert trained == [name] and len(res["records"]) == len(out["records"])


def test_a_shared_stage1_another_process_runs_skips_its_whole_group(swept, sweep_config,
                                                                     monkeypatch):
  """While another process runs a shared stage 1 (it holds train.py's lock of that folder), none
  of its budgets starts a stage 1 of its own or retrains here; the rest of the sweep goes on, and
  the report holds every finished run."""
  from cerp_jax import runlock  # pylint: disable=g-import-not-at-top
  workdir, out = swept
  pep = [r["name"] for r in out["records"] if r["method"] == "pep"]
  assert len(pep) > 1
  for name in pep:
    os.remove(os.path.join(workdir, "runs", name, "sweep_run.json"))
  (stage1,) = [d for d in os.listdir(os.path.join(workdir, "runs")) if d.startswith("pep_stage1_")]
  sdir = os.path.join(workdir, "runs", stage1)
  summary = os.path.join(sdir, "prune", "summary.json")
  os.rename(summary, summary + ".away")  # its stage 1 is unfinished again
  trained = []
  real = train_lib.train_and_evaluate

  def spy(config, wd):
    trained.append((config.stage, os.path.basename(wd)))
    return real(config, wd)

  monkeypatch.setattr(train_lib, "train_and_evaluate", spy)
  try:
    with runlock.hold(sdir):  # the other process, mid-stage-1
      res = S.run_sweep(sweep_config, workdir)
  finally:
    os.rename(summary + ".away", summary)
  assert trained == [("prune", stage1)]  # tried once, found busy: no budget ran anything
  assert {r["name"] for r in res["records"]} == {r["name"] for r in out["records"]} - set(pep)
  trained.clear()
  res = S.run_sweep(sweep_config, workdir)  # stage 1 finished: the budgets retrain (resume)
  assert sorted(trained) == sorted(("retrain", n) for n in pep)
  assert len(res["records"]) == len(out["records"])
  assert not any(os.path.exists(os.path.join(workdir, "runs", n, "prune")) for n in pep)


def test_a_magnitude_run_whose_reference_trains_elsewhere_is_left_too(swept, sweep_config,
                                                                       monkeypatch):
  """The reference comes right before the magnitude runs: a process that finds it busy leaves
  them to the process training it (no error), and a process that finds nothing finished writes
  no report."""
  from cerp_jax import runlock  # pylint: disable=g-import-not-at-top
  workdir, out = swept
  ref = next(r["name"] for r in out["records"] if r["reference"])
  mag = [r["name"] for r in out["records"] if r["method"] == "magnitude"]
  assert mag
  moved = [os.path.join(workdir, "runs", n, "sweep_run.json") for n in [ref] + mag]
  for path in moved:
    os.rename(path, path + ".away")
  try:
    with runlock.hold(os.path.join(workdir, "runs", ref), name=S.RUN_LOCK):
      res = S.run_sweep(sweep_config, workdir)
      assert {r["name"] for r in res["records"]} == (
          {r["name"] for r in out["records"]} - {ref, *mag})
      c = sweep_config.copy_and_resolve_references()
      c.sweep.methods = ("magnitude",)
      before = os.path.getmtime(os.path.join(workdir, "results.md"))
      res = S.run_sweep(c, workdir)  # only busy runs: a warning, no report, no error
      assert res["records"] == [] and os.path.getmtime(os.path.join(workdir, "results.md")) == before
  finally:
    for path in moved:
      os.rename(path + ".away", path)
  assert len(S.run_sweep(sweep_config, workdir, report_only=True)["records"]) == len(out["records"])
