"""The sweep's outputs on hand-made run records: aggregation, CSV, Markdown, the plot (no training)."""

import csv
import os

import pytest

from cerp_jax import sweep_report as R


def _record(method, fraction, seed, lr, recall, *, value_dtype="float32", status="ok",
            reference=False, within=True):
  bb = int(fraction * 40976)
  rec = {"name": f"{method}@{value_dtype}_{fraction}_{seed}_{lr}", "method": method,
         "value_dtype": value_dtype, "budget_fraction": fraction, "budget_bytes": bb,
         "reference": reference, "seed": seed, "lr": lr, "setting": {}, "summary": f"{method} s",
         "status": status, "prune_seconds": 1.0, "train_seconds": 10.0 + seed, "wall_seconds": 12.0}
  if status != "ok":
    return {**rec, "packed_bytes": None, "fill": None, "within_window": False}
  packed = int(0.95 * bb) + seed
  return {**rec, "packed_bytes": packed, "fill": packed / bb, "within_window": within,
          "nonzeros": 100 + seed, "valid_selection": recall, "best_epoch": 2, "epochs": 4,
          "recall@20": recall, "ndcg@20": recall / 2}


@pytest.fixture
def config():
  from configs import sweep_test
  c = sweep_test.get_config()
  c.sweep.methods = ("full", "cerp", "full@int8")
  c.sweep.budgets = (0.2, 0.4, 0.3)  # 0.3 never run: '–' cells
  c.sweep.seeds = (0, 1)
  return c


@pytest.fixture
def records():
  return [
      _record("full", 0.2, 0, 1e-2, 0.30), _record("full", 0.2, 1, 1e-2, 0.34),
      _record("full", 0.2, 0, 1e-3, 0.20), _record("full", 0.2, 1, 1e-3, 0.22),
      _record("full", 0.4, 0, 1e-2, 0.40, within=False), _record("full", 0.4, 1, 1e-2, 0.42),
      _record("cerp", 0.2, 0, 1e-2, 0.35), _record("cerp", 0.2, 1, 1e-2, 0.0,
                                                   status="not_reached"),
      _record("cerp", 0.4, 0, 1e-2, 0.0, status="not_reached"),
      _record("full", 0.2, 0, 1e-2, 0.33, value_dtype="int8"),
      _record("full", 1.0, 0, 1e-2, 0.50, reference=True),
  ]


def test_labels():
  assert R.label("full") == "full table (smaller d)"
  assert R.label("full", "int8") == "full table (smaller d), int8"
  assert [R.label(m) for m in ("qr", "hash", "pep", "cerp")] == ["QR", "hashing", "PEP", "CERP"]


def test_bytes_tick_labels():
  assert R.bytes_label(906_739) == "907 KB"
  assert R.bytes_label(1_813_479) == "1.81 MB"
  assert R.bytes_label(36_269_584) == "36.3 MB"
  assert R.bytes_label(2e9) == "2 GB"
  assert R.bytes_label(512) == "512 B"


def test_aggregate_picks_the_best_lr_and_averages_its_seeds(records):
  rows = R.aggregate(records, ["ndcg@20", "recall@20"])
  keys = [(r["method"], r["value_dtype"], r["budget_fraction"], r["reference"]) for r in rows]
  assert keys == [("full", "float32", 0.2, False), ("full", "float32", 0.4, False),
                  ("full", "int8", 0.2, False), ("cerp", "float32", 0.2, False),
                  ("cerp", "float32", 0.4, False), ("full", "float32", 1.0, True)]
  full = rows[0]
  assert full["lr"] == 1e-2 and full["seeds"] == "0 1" and full["num_seeds"] == 2
  assert full["recall@20"] == pytest.approx(0.32)
  assert full["recall@20_std"] == pytest.approx(0.04 / 2 ** 0.5)
  assert full["packed_bytes"] == full["packed_bytes_min"] + 1 and full["status"] == "ok"
  assert not rows[1]["within_window"]
  assert rows[3]["status"] == "partial" and rows[3]["recall@20_std"] == 0.0
  assert rows[4]["status"] == "not_reached" and rows[4]["recall@20"] is None
  assert rows[4]["packed_bytes"] is None and rows[4]["train_seconds"] == 10.0


def test_write_csv_leaves_missing_values_empty(tmp_path, records):
  rows = R.aggregate(records, ["ndcg@20", "recall@20"])
  R.write_csv(str(tmp_path / "results.csv"), rows, R.RESULT_COLUMNS)
  with open(tmp_path / "results.csv", newline="") as f:
    got = list(csv.DictReader(f))
  assert list(got[0]) == list(R.RESULT_COLUMNS) and len(got) == len(rows)
  assert got[4]["recall@20"] == "" and got[4]["status"] == "not_reached"
  assert got[0]["recall@50"] == ""  # a column no record has
  assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_markdown_tables(records, config):
  rows = R.aggregate(records, ["ndcg@20", "recall@20"])
  md = R.markdown(rows, config, 320, {"recall@20": 0.01, "ndcg@20": 0.02})
  assert md.startswith("# Memory–accuracy frontier: synthetic / mf\n")
  assert ("| full table (smaller d) | 20.0% | full s | 7,786 | 95.0% | 0.3200 ± 0.0283 | "
          "0.1600 ± 0.0141 | 10 s |") in md
  assert "⚠ outside window" in md and "(not_reached)" in md and "(partial)" in md
  assert "| full table (smaller d), int8 | 20.0% |" in md
  assert "| most popular | – | item popularity (no embedding) | – | – | 0.0100 | 0.0200 | – |" in md
  for title in ("Recall@20", "NDCG@20"):
    assert f"## {title} by method × budget" in md
  assert "| method | 20.0% | 30.0% | 40.0% |" in md
  assert "| CERP | 0.3500 | – | – |" in md
  assert "Full table d=32 (reference, 38,927 bytes): Recall@20 0.5000, NDCG@20 0.2500." in md
  assert "most popular" not in R.markdown(rows, config, 320, None)


def test_write_results_writes_every_file(tmp_path, records, config):
  pop = {"recall@20": 0.01, "ndcg@20": 0.02}
  rows, md = R.write_results(str(tmp_path), records, config, 320, pop)
  assert rows == R.aggregate(records, ["ndcg@20", "recall@20"])
  assert (tmp_path / "results.md").read_text() == md == R.markdown(rows, config, 320, pop)
  with open(tmp_path / "runs.csv", newline="") as f:
    assert len(list(csv.DictReader(f))) == len(records)
  with open(tmp_path / "frontier.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert sorted(os.listdir(tmp_path)) == ["frontier.png", "results.csv", "results.md", "runs.csv"]
