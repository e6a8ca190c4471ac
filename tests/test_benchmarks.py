"""The benchmark scripts run and report what they claim (structure and formulas, never timings)."""

import json
import subprocess
import sys

import numpy as np

from cerp_jax import embeddings as emb_lib
from conftest import REPO


def _run(args, timeout=600):
  r = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                     timeout=timeout)
  assert r.returncode == 0, r.stderr[-2000:]
  return r


def test_scaling_rows_follow_the_formulas(tmp_path):
  out = tmp_path / "scaling.json"
  _run(["benchmarks/scaling.py", "--sizes=2000", "--dim=16", "--reps=1", f"--json={out}"])
  rows = {r["method"]: r for r in json.loads(out.read_text())}
  b = emb_lib.smallest_valid_bucket_size(2000)
  assert rows["full"]["embedding_params"] == 2000 * 16 and rows["full"]["setting"] == "d=16"
  assert rows["cerp"]["embedding_params"] == 4 * b * 16 and rows["cerp"]["setting"] == f"b={b}"
  for r in rows.values():
    assert r["fits"] and r["ms_per_step"] > 0 and r["peak_rss_gib"] > 0
    assert r["predicted_peak_gib"] * 2 ** 30 >= r["embedding_params"] * 4  # at least the table


def test_scaling_records_what_does_not_fit(tmp_path):
  out = tmp_path / "scaling.json"
  r = _run(["benchmarks/scaling.py", "--sizes=2000", "--dim=16", "--methods=full",
            "--memory_limit_gib=1e-6", f"--json={out}"])
  (row,) = json.loads(out.read_text())
  assert row["fits"] is False and "predicted" in row["note"] and "does not fit" in r.stdout


def test_bench_json_has_every_requested_figure(tmp_path):
  out = tmp_path / "bench.json"
  _run(["benchmarks/run.py", "--figures=P6", f"--json={out}"])
  res = json.loads(out.read_text())
  assert set(res["P6"]) >= {"measured", "unit", "target", "limit", "meets_target"}
  assert res["machine"]["matmul_gflops"] > 0 and res["machine"]["memory_gbs"] > 0
  assert "P2_mf" not in res


def _summary(path, targets, final_step, seconds=600.0):
  (path / "prune").mkdir(parents=True)
  (path / "prune" / "summary.json").write_text(json.dumps(
      {"final_step": final_step, "seconds": seconds, "targets": targets}))


def test_p3_is_read_from_a_measured_stage_1(tmp_path):
  _summary(tmp_path / "ok", [{"target_sparsity": 0.5, "reached": True, "step": 93_000}], 93_001)
  out = tmp_path / "bench.json"
  r = _run(["benchmarks/run.py", "--figures=P3", f"--p3_workdir={tmp_path / 'ok'}",
            f"--json={out}"])
  p3 = json.loads(out.read_text())["P3"]
  assert p3["measured"] == 10.0 and p3["unit"] == "min" and "MEASURED" in r.stdout
  assert "93,000" in p3["note"]


def test_p3_refuses_a_run_that_did_not_reach_0_5(tmp_path):
  _summary(tmp_path / "no", [{"target_sparsity": 0.5, "reached": False, "step": None}], 72_787)
  r = subprocess.run([sys.executable, "benchmarks/run.py", "--figures=P3",
                      f"--p3_workdir={tmp_path / 'no'}"], cwd=REPO, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode != 0 and "no reached 0.5 target" in r.stderr
  r = subprocess.run([sys.executable, "benchmarks/run.py", "--figures=P3",
                      f"--p3_workdir={tmp_path / 'missing'}"], cwd=REPO, capture_output=True,
                     text=True, timeout=600)
  assert r.returncode != 0 and "does not exist" in r.stderr


def test_threshold_margins_formula():
  sys.path.insert(0, str(REPO / "benchmarks"))
  import threshold_margins  # pylint: disable=g-import-not-at-top
  # σ(0) = 0.5, σ(−∞) → 0: entries 0.1 and 0.6 against 0.5 (one alive), 0.3 against ~0 (alive).
  p = {"P": np.array([[0.1, -0.6], [0.3, 0.0]]), "S_P": np.array([[0.0, 0.0], [-50.0, 0.0]]),
       "Q": np.ones((1, 2)), "other": np.zeros(3)}
  f = threshold_margins.margins(p)
  assert set(f) == {"P"}  # only tables with thresholds
  assert f["P"]["alive"] == 0.5 and f["P"]["above_half"] == 0.5
  np.testing.assert_allclose(f["P"]["median_abs_value"], 0.45)
  np.testing.assert_allclose(f["P"]["median_threshold"], 0.25, atol=1e-12)


def test_threshold_margins_reads_a_stage_1_checkpoint(test_config, tmp_path):
  from cerp_jax import train as T  # pylint: disable=g-import-not-at-top
  test_config.stage = "prune"
  T.train_and_evaluate(test_config, str(tmp_path / "run"))
  out = tmp_path / "m.json"
  _run(["benchmarks/threshold_margins.py", f"--workdir={tmp_path / 'run'}", f"--json={out}"])
  res = json.loads(out.read_text())
  assert set(res["tables"]) == {"P", "Q"} and res["step"] > 0
  for f in res["tables"].values():
    assert 0.0 < f["alive"] <= 1.0 and f["median_margin"] > 0  # alive means |v| > σ(s)
  r = subprocess.run([sys.executable, "benchmarks/threshold_margins.py",
                      f"--workdir={tmp_path / 'none'}"], cwd=REPO, capture_output=True, text=True,
                     timeout=600)
  assert r.returncode != 0 and "no stage-1 checkpoint" in r.stderr
  assert not (tmp_path / "none").exists()  # nothing created


def test_p7_serves_a_given_packed_file(tmp_path):
  from cerp_jax import packing  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  meta = packing.PackedMeta(method="cerp", backbone="mf", combine="sum", num_users=50,
                            num_items=70, item_offset=50, dim=8, bucket_size=12,
                            quotient_divisor=10)
  tables = {k: rng.standard_normal((12, 8)).astype(np.float32) for k in ("P", "Q")}
  packing.write(tmp_path / "m.cerp", packing.pack(tables, meta)[0])
  out = tmp_path / "bench.json"
  r = _run(["benchmarks/run.py", "--figures=P7", f"--p7_packed={tmp_path / 'm.cerp'}",
            "--p7_users=20", "--nop7_lightgcn", f"--json={out}"])
  res = json.loads(out.read_text())
  size = (tmp_path / "m.cerp").stat().st_size
  assert res["P7_rss"]["target"] == round(2 * size / 2 ** 20 + 64, 1)
  for fig in ("P7_p50", "P7_p99", "P7_rss"):
    assert res[fig]["measured"] > 0 and fig in r.stdout
  assert res["P7_p50"]["breakdown"]["runs"][0]["file_bytes"] == size


def test_time_to_accuracy_curve_from_a_run(test_config, tmp_path):
  """A full-table run with eval.test_curve: one CSV row per evaluation, in order, with both splits
  and wall seconds; a workdir without the records is a clear error."""
  import csv  # pylint: disable=g-import-not-at-top
  from cerp_jax import train as T  # pylint: disable=g-import-not-at-top
  c = test_config.copy_and_resolve_references()
  c.model.embedding, c.eval.test_curve, c.eval.patience = "full", True, 10
  result = T.train_and_evaluate(c, str(tmp_path / "run"))["full"]
  out = tmp_path / "tta"
  _run(["benchmarks/time_to_accuracy.py", f"--run=fast:{tmp_path / 'run'}", f"--out={out}"])
  rows = list(csv.DictReader(open(f"{out}.csv")))
  assert [int(r["epoch"]) for r in rows] == [h["epoch"] + 1 for h in result["history"]]
  np.testing.assert_allclose([float(r["valid_recall@20"]) for r in rows],
                             [h["recall@20"] for h in result["history"]], atol=1e-5)
  assert all(r["recipe"] == "fast" and r["test_recall@20"] for r in rows)
  assert [float(r["wall_s"]) for r in rows] == sorted(float(r["wall_s"]) for r in rows)
  assert (tmp_path / "tta.png").stat().st_size > 0
  (tmp_path / "stage1").mkdir()
  (tmp_path / "stage1" / "config.json").write_text((tmp_path / "run" / "config.json").read_text())
  (tmp_path / "stage1" / "metrics.jsonl").write_text('{"stage": "prune", "epoch": 0}\n')
  for bad, message in ((tmp_path / "stage1", "no stage-2 evaluation record with 'seconds'"),
                       (tmp_path / "missing", "config.json: no such file")):
    r = subprocess.run([sys.executable, "benchmarks/time_to_accuracy.py", f"--run=x:{bad}",
                        f"--out={tmp_path / 'x'}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "error:" in r.stderr and message in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "x.csv").exists()
  # --keep: the CSV's curves stay, written back unchanged; a --run of the same name replaces its
  # curve in place
  kept = tmp_path / "kept"
  _run(["benchmarks/time_to_accuracy.py", f"--keep={out}.csv", f"--run=again:{tmp_path / 'run'}",
        f"--out={kept}"])
  again = list(csv.DictReader(open(f"{kept}.csv")))
  assert again[:len(rows)] == rows
  assert [r["recipe"] for r in again[len(rows):]] == ["again"] * len(rows)
  _run(["benchmarks/time_to_accuracy.py", f"--keep={kept}.csv", f"--run=fast:{tmp_path / 'run'}",
        f"--out={kept}"])
  recipes = [r["recipe"] for r in csv.DictReader(open(f"{kept}.csv"))]
  assert recipes == ["fast"] * len(rows) + ["again"] * len(rows)
  lines = open(f"{out}.csv").read().splitlines()
  for text, message in (("a,b\n1,2\n", "x.csv:1: columns"),
                        ("\n".join(lines[:2] + ["fast,3,oops,,,,"]) + "\n",
                         "x.csv:3: wall_s='oops' is not a number"),
                        ("\n".join(lines[:2] + ["fast,3"]) + "\n", "x.csv:3: 7 cells expected")):
    (tmp_path / "x.csv").write_text(text)
    r = subprocess.run([sys.executable, "benchmarks/time_to_accuracy.py",
                        f"--keep={tmp_path / 'x.csv'}", f"--out={tmp_path / 'y'}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "error:" in r.stderr and message in r.stderr, r.stderr
    assert not (tmp_path / "y.csv").exists()
