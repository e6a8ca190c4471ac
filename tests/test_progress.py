"""Honest progress (cerp_jax/progress.py), TensorBoard scalars, stage-1 time and eval.py's
share of the full table's Recall@20."""

import glob
import json
import os
import struct

import pytest
from tensorboardX.proto import event_pb2

from cerp_jax import finalize
from cerp_jax import progress as progress_lib
from cerp_jax import train as T


def read_scalars(run_dir: str) -> dict:
  """{tag: [(step, value)]} from the TFRecord event files of one TensorBoard run directory."""
  out = {}
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      blob = f.read()
    pos = 0
    while pos < len(blob):
      (length,) = struct.unpack("<Q", blob[pos:pos + 8])
      event = event_pb2.Event.FromString(blob[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


@pytest.fixture
def recorded(monkeypatch):
  bars = []

  class Recording(progress_lib.Progress):
    def __init__(self, *a, **kw):
      super().__init__(*a, **kw)
      bars.append(self)

  monkeypatch.setattr(progress_lib, "Progress", Recording)
  return bars


def test_progress_totals_and_tensorboard_on_the_test_config(test_config, tmp_path, recorded):
  wd = str(tmp_path / "run")
  results = T.train_and_evaluate(test_config, wd)
  with open(os.path.join(wd, "prune", "summary.json")) as f:
    summary = json.load(f)
  prune_bar, retrain_bars = recorded[0], recorded[1:]
  # stage 1 counts entries pruned toward the last budget, never max_epochs × steps
  last_budget = summary["targets"][-1]["budget"]
  assert prune_bar.unit == "entries"
  assert prune_bar.total == summary["num_entries"] - last_budget
  assert prune_bar.n == prune_bar.total and prune_bar.step == summary["final_step"]
  # stage 2 ends exactly at its early-stopping horizon (the total moved to the real end)
  assert len(retrain_bars) == len(results)
  for bar, r in zip(retrain_bars, results.values()):
    assert bar.total == bar.n == r["steps"] == r["epochs"] * r["steps_per_epoch"]
    assert r["stage1_seconds"] == summary["seconds"] > 0
  assert "stage 1 s" in finalize.training_table(results)
  # TensorBoard holds what metrics.jsonl holds, at the same steps
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    records = [json.loads(l) for l in f]
  prune_recs = [r for r in records if r.get("stage") == "prune" and "prune/nonzeros" in r]
  tb = read_scalars(os.path.join(wd, "tensorboard", "prune"))
  assert tb["prune/nonzeros"] == [(r["step"], r["prune/nonzeros"]) for r in prune_recs]
  assert set(tb) >= {"train/bpr_loss", "prune/sparsity", "train/steps_per_s", "gamma"}
  tag = next(iter(results))
  tb_re = read_scalars(os.path.join(wd, "tensorboard", f"retrain_{tag}"))
  valid = [(r["step"], r["valid/recall@20"]) for r in records
           if r.get("target") == tag and "valid/recall@20" in r]
  # (TensorBoard's tag alphabet has no '@': tensorboardX writes valid/recall_20)
  assert [(s, pytest.approx(v)) for s, v in tb_re["valid/recall_20"]] == valid
  # eval.py's reference: the share of a full-table run's Recall@20 each budget keeps
  ref = tmp_path / "full" / "retrain" / "full"
  ref.mkdir(parents=True)
  (ref / "result.json").write_text(json.dumps({"test": {"recall@20": 0.5, "ndcg@20": 0.4}}))
  out = finalize.evaluate_workdir(wd, reference=str(tmp_path / "full"))
  assert out["reference"]["recall@20"] == 0.5
  for row in out["results"]:
    assert row["recall@20_kept"] == pytest.approx(row["recall@20"] / 0.5)
  assert "kept:" in finalize.markdown_table(out)


def test_log_lines_when_not_a_terminal(monkeypatch):
  lines = []
  monkeypatch.setattr(progress_lib.logging, "info", lambda fmt, *a: lines.append(fmt % a))
  p = progress_lib.Progress("prune", 1000, 0, 0, unit="entries", bar=False, log_every_s=1e-9)
  p.update(0, 10)             # the first update sets the rate's baseline
  p.update(250, 60, nonzeros="750")
  p.close()
  assert len(lines) == 2
  assert lines[-1].startswith("prune: 250/1,000 entries (25.0 %), step 60 at ")
  assert "steps/s, ETA " in lines[-1] and "ETA ?" not in lines[-1] and "nonzeros 750" in lines[-1]


def test_progress_clips_and_moves_its_total():
  p = progress_lib.Progress("retrain", 100, 40, 40, bar=False, log_every_s=0)
  p.update(500, 500)
  assert p.n == p.total == 100
  p.set_total(300)
  p.update(200, 200)
  assert (p.n, p.total) == (200, 300)
  p.set_total(150)            # never below the position reached
  assert p.total == 200
  p.close()
  assert progress_lib.format_seconds(None) == "?" and progress_lib.format_seconds(3725) == "1h02m"


def test_eta_takes_the_recent_rate(monkeypatch):
  """Stage 1 prunes faster as it goes: the ETA follows the last window, not the mean since start."""
  clock = [0.0]
  monkeypatch.setattr(progress_lib, "time", type("Clock", (), {"perf_counter": lambda: clock[0]}))
  p = progress_lib.Progress("prune", 1000, 0, 0, unit="entries", bar=False, log_every_s=0,
                            eta_window_s=100.0)
  assert p.eta_s() is None
  for t, n in ((0, 0), (100, 10), (200, 20), (300, 120)):
    clock[0] = float(t)
    p.update(n, t)
  # the last 100 s moved 100 entries: 880 left at 1 entry/s (the mean rate, 0.4/s, would say 2,200)
  assert p.eta_s() == pytest.approx(880.0)
  clock[0] = 500.0
  p.update(120, 500)          # nothing moved in the last window: no ETA rather than a stale one
  assert p.eta_s() is None
  p.close()
