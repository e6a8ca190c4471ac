"""Time-to-accuracy curves of training runs: CSV and a plot of Recall@20 against wall-clock seconds
and against epochs.

  python benchmarks/time_to_accuracy.py --run=cpu:runs/tta/cpu --run=pytorch:runs/tta/pytorch \
      --out=docs/results/lightgcn_time_to_accuracy

  python benchmarks/time_to_accuracy.py --keep=docs/results/lightgcn_time_to_accuracy.csv \
      --run=pytorch:runs/tta/pytorch    # add a curve to the committed ones (their workdirs gone)

Each ``--run=NAME:WORKDIR`` is a train.py workdir whose stage 2 (or full-table) run evaluated with
``--config.eval.test_curve=True``: every selection evaluation's record in ``metrics.jsonl`` holds
the validation metrics, the test metrics and ``seconds`` (the stage's wall seconds so far, its
validation passes included, the test passes not). Writes ``OUT.csv`` (columns recipe, epoch,
wall_s, valid_recall@20, test_recall@20, valid_ndcg@20, test_ndcg@20; one row per evaluation,
``epoch`` = epochs trained when it ran; empty cells where a split was not measured) and ``OUT.png``.
``--keep=CSV`` first takes the curves of a CSV this script wrote; a ``--run`` of the same name
replaces its curve in place (so a curve whose workdir is gone stays in the figure beside new ones).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Sequence

from absl import app
from absl import flags

from cerp_jax import cli
from cerp_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("run", [], "NAME:WORKDIR of a run to include (repeat).")
flags.DEFINE_string("out", "docs/results/lightgcn_time_to_accuracy", "Output path without suffix.")
flags.DEFINE_string("target", "", "Only records of this stage-2 target (default: every one).")
flags.DEFINE_string("keep", "", "A CSV this script wrote: its curves are kept, except those a "
                    "--run names (which replace them).")
flags.DEFINE_float("goal", 0.0, "Draw this test Recall@20 as a horizontal line (0: none).")

COLUMNS = ("recipe", "epoch", "wall_s", "valid_recall@20", "test_recall@20", "valid_ndcg@20",
           "test_ndcg@20")


def curve(workdir: str, target: str = "") -> list[dict]:
  """The evaluation records of ``workdir/metrics.jsonl`` as rows (without ``recipe``), in order.

  Raises:
    FileNotFoundError: no metrics.jsonl or config.json there.
    ValueError: a line is not JSON (named by file and line), or no record has ``seconds``.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  timing = workdir_lib.read_json(os.path.join(workdir, "config.json"))["eval"].get("timing", "end")
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
      if rec.get("stage") != "retrain" or "seconds" not in rec:
        continue
      if target and rec.get("target") != target:
        continue
      # 'end' evaluates after epoch e (e + 1 trained); 'start' before it; 'first_step' after 1 step
      rows.append({"epoch": rec["epoch"] + (1 if timing == "end" else 0),
                   "wall_s": round(rec["seconds"], 1),
                   **{f"{s}_{m}": _round(rec.get(f"{s}/{m}")) for s in ("valid", "test")
                      for m in ("recall@20", "ndcg@20")}})
  if not rows:
    raise ValueError(f"{path}: no stage-2 evaluation record with 'seconds' (written by this "
                     "version's train.py; add --config.eval.test_curve=True for test metrics)")
  return rows


def read_csv(path: str) -> list[tuple[str, list[dict]]]:
  """The curves of a CSV :func:`write_csv` wrote, as ``[(recipe, rows)]`` in file order.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not UTF-8, its header is not :data:`COLUMNS`, a row has another
      number of cells, or a cell is not a number (named by file, line and column).
  """
  runs: dict[str, list[dict]] = {}
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"{path}:1: columns {reader.fieldnames} are not {list(COLUMNS)}")
      for row in reader:
        runs.setdefault(row["recipe"], []).append(_csv_row(path, reader.line_num, row))
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
  return list(runs.items())


def _csv_row(path: str, line: int, row: dict) -> dict:
  """One CSV row's numbers (None for an empty cell); errors name the file, line and column."""
  if None in row or any(v is None for v in row.values()):
    raise ValueError(f"{path}:{line}: {len(COLUMNS)} cells expected")
  rec = {}
  for col in COLUMNS[1:]:
    cell = row[col]
    try:
      rec[col] = (int(cell) if col == "epoch" else float(cell)) if cell != "" else None
    except ValueError:
      raise ValueError(f"{path}:{line}: {col}={cell!r} is not a number") from None
  if rec["epoch"] is None or rec["wall_s"] is None:
    raise ValueError(f"{path}:{line}: epoch and wall_s must not be empty")
  return rec


def _round(x):
  return None if x is None else round(x, 5)


def write_csv(path: str, runs: Sequence[tuple[str, list[dict]]]) -> None:
  """One row per evaluation of every run, :data:`COLUMNS` (empty where not measured)."""
  tmp = path + ".tmp"
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, COLUMNS)
    w.writeheader()
    for name, rows in runs:
      for r in rows:
        w.writerow({"recipe": name, **{k: ("" if v is None else v) for k, v in r.items()}})
  os.replace(tmp, path)


def plot(path: str, runs: Sequence[tuple[str, list[dict]]], goal: float = 0.0) -> None:
  """Recall@20 (validation solid, test dashed) against wall seconds (left) and epochs (right)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  for i, (name, rows) in enumerate(runs):
    color = f"C{i}"
    for split, style in (("valid", "-"), ("test", "--")):
      pts = [(r["wall_s"] / 60, r["epoch"], r[f"{split}_recall@20"]) for r in rows
             if r[f"{split}_recall@20"] is not None]
      if not pts:
        continue
      label = f"{name} ({split})"
      axes[0].plot([p[0] for p in pts], [p[2] for p in pts], style, color=color, marker=".",
                   label=label)
      axes[1].plot([p[1] for p in pts], [p[2] for p in pts], style, color=color, marker=".",
                   label=label)
  axes[0].set_xlabel("wall-clock minutes (stage, validation passes included)")
  axes[1].set_xlabel("epochs")
  axes[0].set_ylabel("Recall@20")
  for ax in axes:
    if goal:
      ax.axhline(goal, color="grey", lw=0.8, ls=":")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=110)
  plt.close(fig)
  os.replace(path + ".tmp.png", path)


def _curves() -> list:
  runs = []
  for spec in FLAGS.run:
    name, sep, workdir = spec.partition(":")
    if not sep or not name or not workdir:
      raise ValueError(f"--run={spec!r}: expected NAME:WORKDIR")
    runs.append((name, curve(workdir, FLAGS.target)))
  kept = read_csv(FLAGS.keep) if FLAGS.keep else []
  if not runs and not kept:
    raise ValueError("give at least one --run=NAME:WORKDIR (or --keep=CSV)")
  new = dict(runs)  # a kept curve a --run names again is replaced in place (its colour stays)
  return [(n, new.pop(n, rows)) for n, rows in kept] + list(new.items())


def main(argv):
  del argv
  runs = cli.run_cli(_curves)
  write_csv(FLAGS.out + ".csv", runs)
  plot(FLAGS.out + ".png", runs, FLAGS.goal)
  for name, rows in runs:
    last = rows[-1]
    print(f"{name}: {len(rows)} evaluations, last at epoch {last['epoch']}, {last['wall_s']:.0f} s: "
          f"valid Recall@20 {last['valid_recall@20']}, test {last['test_recall@20']}")
  print(f"wrote {FLAGS.out}.csv and {FLAGS.out}.png")


if __name__ == "__main__":
  app.run(main)
