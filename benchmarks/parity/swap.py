"""Swap test: the authors' NCF-MLP retraining run on cerp_jax's own stage-1 snapshot.

  python benchmarks/parity/swap.py --seed_dir=runs/parity/ml100k_v2/cerp_jax/mlp/seed3407 \
      --original_src=runs/parity/ml100k_v2/original/mlp/src \
      --original_python=/path/to/torch/venv/bin/python --swap_out=runs/parity/ml100k_v2/swap/seed3407

Writes cerp_jax's snapshot of ``--target`` (P → the original's ``R_v``: rows ``id mod b``; Q →
``Q_v``: rows ``id div ⌈N/b⌉``) and its step-0 tables into the original's embedding folders, runs
the original's ``retrain.py`` on them with the harness's settings, stops it after its last
evaluation within the epoch cap, and writes ``<swap_out>/retrain_<t>.json`` (the evaluation history).
With the same mask and the same initial values on both sides, what remains different is the
retraining code (model init, batching, optimizer); set beside cerp_jax's retraining of the same
snapshot, it tells a difference of stage 1 from a difference of stage 2.
"""

from __future__ import annotations

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from benchmarks.parity import original  # noqa: E402
from benchmarks.parity import run as harness  # noqa: E402

flags.DEFINE_string("seed_dir", None, "A finished cerp_jax parity run (MLP) with its stage 1.")
flags.DEFINE_string("original_src", None, "The harness's patched scratch copy of the original.")
flags.DEFINE_string("swap_out", None, "Where the swapped embeddings and the result go.")
flags.DEFINE_float("target", 0.5, "Target sparsity whose snapshot is retrained.")
FLAGS = flags.FLAGS
NAME = "ml100k"


def export_snapshot(seed_dir: pathlib.Path, target: float, emb_dir: pathlib.Path) -> dict:
  """Writes the snapshot and the step-0 tables as the original's ``R_v``/``Q_v`` ``.npz`` files."""
  from cerp_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from cerp_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(json.loads((seed_dir / "config.json").read_text()))
  data = data_lib.load_interactions(config)
  ps, summary = train_lib.load_prune_results(config, data, str(seed_dir))
  i = [t["target_sparsity"] for t in summary["targets"]].index(target)
  snap_dir = emb_dir / f"sparsity_{target:.4f}"
  for folder, tables in ((snap_dir, {k: np.asarray(v[i]) for k, v in ps.snapshots.items()}),
                         (emb_dir / "initial_emb", {k: np.asarray(v) for k, v in ps.initial.items()})):
    folder.mkdir(parents=True, exist_ok=True)
    for ours, theirs in (("P", "R_v"), ("Q", "Q_v")):
      sp.save_npz(folder / f"{theirs}.npz", sp.csr_matrix(tables[ours].astype(np.float32)))
  nnz = sum(int(np.count_nonzero(ps.snapshots[k][i])) for k in ps.snapshots)
  return {"config": config, "nonzeros": nnz, "snapshot_step": summary["targets"][i]["step"]}


def main(argv):
  del argv
  seed_dir, out = pathlib.Path(FLAGS.seed_dir), pathlib.Path(FLAGS.swap_out).resolve()
  emb_dir = out / "res" / NAME / "MLP" / "embedding"
  info = export_snapshot(seed_dir, FLAGS.target, emb_dir)
  c = info["config"]
  cmd = original.retrain_mlp_command(FLAGS.original_python, NAME, c.model.bucket_size, c.model.dim,
                                     FLAGS.target, c.seed, str(out / "res"))
  cmd += ["--batch_size_train_factor", str(c.retrain.groups_per_step)]
  res_log = emb_dir / f"sparsity_{FLAGS.target:.4f}" / "ndcg_recall_log.txt"
  last_eval = (c.retrain.max_epochs - 1) // c.eval.every_epochs * c.eval.every_epochs

  def stop():
    hist = original.parse_mlp_retrain_log(res_log.read_text()) if res_log.exists() else []
    return bool(hist) and hist[-1]["epoch"] >= last_eval

  rc, secs = harness.run_logged(cmd, pathlib.Path(FLAGS.original_src) / "CERP",
                          out / f"retrain_{FLAGS.target:.4f}.log", stop=stop,
                          env=harness.ORIGINAL_ENV)
  hist = original.parse_mlp_retrain_log(res_log.read_text()) if res_log.exists() else []
  harness.dump_json(out / f"retrain_{FLAGS.target:.4f}.json",
                {"rc": rc, "seconds": secs, "history": hist, "seed_dir": str(seed_dir),
                 "snapshot_step": info["snapshot_step"], "nonzeros": info["nonzeros"],
                 "cmd": cmd[1:]})
  print(json.dumps(hist, indent=1))


if __name__ == "__main__":
  app.run(main)
