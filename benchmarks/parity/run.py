"""Parity harness: the authors' CERP code vs cerp_jax's `:parity` preset on one split, side by side.

  python benchmarks/parity/run.py --original=/path/to/CERP_checkout \
      --original_python=/path/to/torch/venv/bin/python --workdir=runs/parity/ml100k

For each backbone (NCF-MLP, LightGCN) it exports cerp_jax's MovieLens-100K split (and its fixed
stage-1 samples) into a patched scratch copy of the original (``original.prepare``), runs the
original's stage 1 and retraining of each budget, runs cerp_jax's ``benchmarks/parity/config.py``
over ``--seeds``, trains the full-table references (d of the CERP run, and the widest d whose
packed bytes fit each budget), and writes ``parity.csv``, ``parity.md`` and ``parity.png`` to
``--out``. Every task is skipped when its result file exists, so rerunning resumes.
Threshold start and epoch caps are passed to both sides (the original through its own options, or
by stopping it after the capped evaluation) and written into every output.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks.parity import config as parity_config  # noqa: E402
from benchmarks.parity import export  # noqa: E402
from benchmarks.parity import original  # noqa: E402
from benchmarks.parity import table  # noqa: E402

flags.DEFINE_string("original", None, "Local checkout of github.com/xurong-liang/CERP.")
flags.DEFINE_string("original_python", sys.executable, "Python with torch for the original.")
flags.DEFINE_string("workdir", "runs/parity/ml100k", "Runs of both sides (git-ignored).")
flags.DEFINE_string("out", "docs/results", "Where parity.csv/md/png go.")
flags.DEFINE_list("backbones", ["mlp", "lightgcn"], "mlp and/or lightgcn.")
flags.DEFINE_list("targets", ["0.5", "0.8"], "Target sparsities of the 2·b·d entries.")
flags.DEFINE_integer("num_seeds", 3, "cerp_jax seeds (config seed, +1, …); the original runs the first.")
flags.DEFINE_integer("full_seeds", 1, "Seeds of each full-table reference.")
flags.DEFINE_integer("original_seeds", 1, "Seeds of the original (config seed, +1, …).")
flags.DEFINE_float("threshold_init", -8.0, "Both sides' threshold start (paper: −100).")
flags.DEFINE_float("prune_lr", 1e-2, "Both sides' stage-1 Adam learning rate (paper: 1e-3).")
flags.DEFINE_float("prune_weight_decay", 1e-3, "Both sides' stage-1 coupled weight decay (paper: 1e-5).")
flags.DEFINE_float("gamma_init", 1.0, "Both sides' regularizer weight γ₀ (paper: 1; `--gamma_init`).")
flags.DEFINE_integer("mlp_retrain_groups", 50, "MLP retraining groups per step, both sides (paper: 10).")
flags.DEFINE_integer("prune_max_epochs", 5, "Both sides' stage-1 epoch cap.")
flags.DEFINE_integer("mlp_retrain_epochs", 6, "Retraining epochs cap, MLP (evaluations at 0 and 5).")
flags.DEFINE_integer("lightgcn_retrain_epochs", 21, "Retraining epochs cap, LightGCN (0, 10, 20).")
flags.DEFINE_integer("jobs", 3, "Processes at once.")
flags.DEFINE_list("tasks", ["original_prune", "original_retrain", "cerp_jax", "full",
                            "random_ticket"],
                  "Which task kinds this invocation runs (finished ones are skipped anyway); "
                  "random_ticket retrains each cerp_jax seed's snapshots under random masks.")
flags.DEFINE_bool("report_only", False, "Only rebuild the table from finished runs.")
FLAGS = flags.FLAGS

NAME = "ml100k"
_SETUP_LOCK = threading.Lock()  # the stage-1 and retraining threads of one seed share its export
# One thread each: with torch's default two OpenMP threads on this loaded 2-core machine the
# original ran ~12× slower per step (spinning threads).
ORIGINAL_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _seed0(backbone: str) -> int:
  return int(parity_config.get_config(backbone).seed)


def _cap(backbone: str) -> int:
  return FLAGS.mlp_retrain_epochs if backbone == "mlp" else FLAGS.lightgcn_retrain_epochs


def dump_json(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
  os.replace(tmp, path)


def run_logged(cmd: list, cwd, log: pathlib.Path, stop=None, env=None) -> tuple[int, float]:
  """Runs ``cmd`` with stdout+stderr to ``log``; ``stop()`` → True terminates it. (rc, seconds)."""
  t0 = time.time()
  log.parent.mkdir(parents=True, exist_ok=True)
  with open(log, "w", encoding="utf-8") as f:
    p = subprocess.Popen(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                         env={**os.environ, **(env or {})})
    while p.poll() is None:
      time.sleep(5)
      if stop is not None and stop():
        logging.info("stopping %s at the epoch cap", cmd[1])
        p.terminate()
        p.wait()
        return 0, time.time() - t0
  return p.returncode, time.time() - t0


# ------------------------------------------------------------------------------------ original

def _export(c, src: pathlib.Path, odir: pathlib.Path) -> None:
  """Patched scratch copy of the original plus the split and stage-1 samples of ``c.seed``."""
  from cerp_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from cerp_jax import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  patches = original.prepare(FLAGS.original, src, NAME)
  data = data_lib.load_interactions(c)
  s = sampler_lib.BPRSampler(data.train, c.prune.num_negatives, "fixed", "parity", seed=c.seed)
  users, items = s.epoch(0)
  counts = export.export_split(data.train, data.test, users, items, src / "CERP/data" / NAME,
                               src / "CERP-LightGCN/data" / NAME)
  dump_json(odir / "export.json", {"patches": patches, "samples_seed": c.seed, **counts})


def _original_setup(backbone: str, wd: pathlib.Path, i: int = 0):
  """(config, seed, scratch src, run dir, res prepath, steps/epoch) of the original's i-th seed
  (config seed + i; its own folder ``original/<backbone>[_seed<s>]``); exports the split once. Every
  seed trains stage 1 on the same exported samples (those of the config's seed)."""
  c = parity_config.get_config(backbone)
  seed = c.seed + i
  odir = wd / "original" / (backbone if i == 0 else f"{backbone}_seed{seed}")
  src = odir / "src"
  with _SETUP_LOCK:
    if not (odir / "export.json").exists():
      _export(c, src, odir)
  info = json.loads((odir / "export.json").read_text())
  return c, seed, src, odir, str((odir / "res").resolve()), -(-info["groups"] // 10)


def original_prune(backbone: str, wd: pathlib.Path, i: int = 0) -> None:
  """The original's stage 1 (its i-th seed) → ``original/<backbone>[_seed<s>]/prune.json``."""
  c, seed, src, odir, prepath, steps_per_epoch = _original_setup(backbone, wd, i)
  if (odir / "prune.json").exists():
    return
  cmd = original.prune_command(FLAGS.original_python, NAME, backbone, c.model.bucket_size,
                               c.model.dim, [float(t) for t in FLAGS.targets], FLAGS.threshold_init,
                               seed, prepath, FLAGS.prune_max_epochs)
  cmd += ["--fm_lr", str(FLAGS.prune_lr), "--fm_l2_regularization", str(FLAGS.prune_weight_decay),
          "--gamma_init", str(FLAGS.gamma_init)]
  rc, secs = run_logged(cmd, src / "CERP", odir / "prune.log", env=ORIGINAL_ENV)
  parsed = original.parse_prune_log((odir / "prune.log").read_text(), steps_per_epoch)
  dump_json(odir / "prune.json", {"rc": rc, "seconds": secs, "seed": seed, "cmd": cmd[1:],
                              "steps_per_epoch": steps_per_epoch, **parsed})


def original_retrain(backbone: str, wd: pathlib.Path, t: float, i: int = 0) -> None:
  """The original's retraining of budget ``t``, started as soon as its snapshot is on disk."""
  c, seed, src, odir, prepath, _ = _original_setup(backbone, wd, i)
  out = odir / f"retrain_{t:.4f}.json"
  emb_dir = pathlib.Path(prepath) / NAME / ("GCN" if backbone == "lightgcn" else "MLP") / "embedding"
  snap = emb_dir / f"sparsity_{t:.4f}"
  while not out.exists():
    if (snap / "R_v.npz").exists() and (snap / "Q_v.npz").exists():
      time.sleep(10)  # both files written
      break
    if (odir / "prune.json").exists():
      return  # stage 1 ended without this budget
    time.sleep(15)
  if out.exists():
    return
  if backbone == "mlp":
    cmd = original.retrain_mlp_command(FLAGS.original_python, NAME, c.model.bucket_size,
                                       c.model.dim, t, seed, prepath)
    cmd += ["--batch_size_train_factor", str(FLAGS.mlp_retrain_groups)]
    cwd, res_log = src / "CERP", snap / "ndcg_recall_log.txt"
    parse = original.parse_mlp_retrain_log
  else:
    cmd = original.retrain_lightgcn_command(FLAGS.original_python, NAME, c.model.bucket_size,
                                            c.model.dim, t, str(emb_dir), seed=seed)
    cwd, res_log = src / "CERP-LightGCN/code", snap / "LightGCNres.txt"
    parse = original.parse_lightgcn_retrain_log
  cap = _cap(backbone)
  last_eval = (cap - 1) // c.eval.every_epochs * c.eval.every_epochs

  def stop():
    hist = parse(res_log.read_text()) if res_log.exists() else []
    return bool(hist) and hist[-1]["epoch"] >= last_eval

  rc, secs = run_logged(cmd, cwd, odir / f"retrain_{t:.4f}.log", stop=stop, env=ORIGINAL_ENV)
  hist = parse(res_log.read_text()) if res_log.exists() else []
  dump_json(out, {"rc": rc, "seconds": secs, "history": hist, "epoch_cap": cap, "cmd": cmd[1:]})


def reparse_original(wd: pathlib.Path) -> None:
  """Re-reads each original retraining's metric log into its JSON (evaluations within the cap)."""
  for bb in FLAGS.backbones:
    c = parity_config.get_config(bb)
    last_eval = (_cap(bb) - 1) // c.eval.every_epochs * c.eval.every_epochs
    for path in (wd / "original").glob(f"{bb}*/retrain_*.json"):
      rec = json.loads(path.read_text())
      t = path.stem.split("_")[1]
      snap = path.parent / "res" / NAME / ("GCN" if bb == "lightgcn" else "MLP") / \
          "embedding" / f"sparsity_{t}"
      log = snap / ("LightGCNres.txt" if bb == "lightgcn" else "ndcg_recall_log.txt")
      if log.exists():
        parse = (original.parse_lightgcn_retrain_log if bb == "lightgcn"
                 else original.parse_mlp_retrain_log)
        rec["history"] = [h for h in parse(log.read_text()) if h["epoch"] <= last_eval]
        dump_json(path, rec)


# ------------------------------------------------------------------------------------ cerp_jax

def train_py(backbone: str, workdir: pathlib.Path, seed: int, full_dim: int = 0,
             extra: tuple = ()) -> None:
  """One cerp_jax run (both stages, or the full table at ``full_dim``) of the parity config, with
  ``extra`` flags appended."""
  marker = workdir / "parity_done.json"
  if marker.exists():
    return
  arg = f"{backbone},full" if full_dim else backbone
  cmd = [sys.executable, "train.py", f"--config=benchmarks/parity/config.py:{arg}",
         f"--workdir={workdir}", f"--config.seed={seed}",
         f"--config.model.threshold_init={FLAGS.threshold_init}",
         f"--config.prune.max_epochs={FLAGS.prune_max_epochs}",
         f"--config.retrain.max_epochs={_cap(backbone)}",
         f"--config.target_sparsities=({','.join(FLAGS.targets)})"]
  cmd += [f"--config.prune.lr={FLAGS.prune_lr}",
          f"--config.prune.weight_decay={FLAGS.prune_weight_decay}",
          f"--config.prune.gamma_init={FLAGS.gamma_init}"]
  if backbone == "mlp":
    cmd.append(f"--config.retrain.groups_per_step={FLAGS.mlp_retrain_groups}")
  if full_dim:
    cmd.append(f"--config.model.dim={full_dim}")
  cmd += list(extra)
  rc, secs = run_logged(cmd, REPO, workdir.parent / f"{workdir.name}.log")
  if rc == 0:
    dump_json(marker, {"seconds": secs, "cmd": cmd[1:]})
  else:
    logging.error("%s failed (rc %d); see %s.log", workdir, rc, workdir)


def random_ticket(backbone: str, wd: pathlib.Path, seed: int) -> None:
  """The random-ticket control of cerp_jax's seed ``seed``: its stage 1 (``--config.prune_workdir``),
  each budget retrained under a random mask of the snapshot's size (``retrain.ticket='random'``)."""
  stage1 = wd / "cerp_jax" / backbone / f"seed{seed}"
  if not (stage1 / "prune" / "summary.json").exists():
    logging.error("random ticket of %s: no stage 1 there yet; run the cerp_jax task first", stage1)
    return
  train_py(backbone, wd / "random_ticket" / backbone / f"seed{seed}", seed,
           extra=("--config.stage=retrain", f"--config.prune_workdir={stage1}",
                  "--config.retrain.ticket=random"))


def full_dims(backbone: str) -> dict:
  """``{target: d}``: the widest full table whose packed bytes fit the CERP budget's bytes."""
  from cerp_jax import budget  # pylint: disable=g-import-not-at-top
  c = parity_config.get_config(backbone)
  n = 943 + 1682
  out = {}
  for t in FLAGS.targets:
    nnz = int((1 - float(t)) * 2 * c.model.bucket_size * c.model.dim)
    _, hi = budget.cerp_bytes_range(n, c.model.bucket_size, c.model.dim, nnz)
    out[float(t)] = budget.solve_full(hi, n)[0]
  return out


def main(argv):
  del argv
  wd = (REPO / FLAGS.workdir) if not os.path.isabs(FLAGS.workdir) else pathlib.Path(FLAGS.workdir)
  settings = {"threshold_init": FLAGS.threshold_init, "prune_lr": FLAGS.prune_lr,
              "prune_weight_decay": FLAGS.prune_weight_decay, "gamma_init": FLAGS.gamma_init,
              "mlp_retrain_groups": FLAGS.mlp_retrain_groups, "prune_max_epochs": FLAGS.prune_max_epochs,
              "mlp_retrain_epochs": FLAGS.mlp_retrain_epochs,
              "lightgcn_retrain_epochs": FLAGS.lightgcn_retrain_epochs}
  if not FLAGS.report_only:
    if not FLAGS.original:
      raise app.UsageError("--original=PATH (a checkout of xurong-liang/CERP) is required")
    tasks = []
    with concurrent.futures.ThreadPoolExecutor(FLAGS.jobs) as pool, \
        concurrent.futures.ThreadPoolExecutor(
            3 * len(FLAGS.backbones) * FLAGS.original_seeds) as orig_pool:
      for bb in FLAGS.backbones:  # original tasks: own threads (retrains wait for snapshots)
        for i in range(FLAGS.original_seeds):
          if "original_prune" in FLAGS.tasks:
            tasks.append(orig_pool.submit(original_prune, bb, wd, i))
          if "original_retrain" in FLAGS.tasks:
            for t in FLAGS.targets:
              tasks.append(orig_pool.submit(original_retrain, bb, wd, float(t), i))
      for i in range(FLAGS.num_seeds if "cerp_jax" in FLAGS.tasks else 0):
        for bb in FLAGS.backbones:  # seeds interleaved across backbones
          s = _seed0(bb) + i
          tasks.append(pool.submit(train_py, bb, wd / "cerp_jax" / bb / f"seed{s}", s))
      for bb in FLAGS.backbones if "full" in FLAGS.tasks else ():
        dims = sorted({parity_config.get_config(bb).model.dim, *full_dims(bb).values()})
        for d in dims:
          for i in range(FLAGS.full_seeds):
            s = _seed0(bb) + i
            tasks.append(pool.submit(train_py, bb, wd / "full" / bb / f"d{d}_seed{s}", s, d))
      for f in tasks:
        f.result()
      later = [pool.submit(random_ticket, bb, wd, _seed0(bb) + i)
               for i in range(FLAGS.num_seeds if "random_ticket" in FLAGS.tasks else 0)
               for bb in FLAGS.backbones]  # each needs its seed's stage 1
      for f in later:
        f.result()
  reparse_original(wd)
  rows = table.collect(wd, FLAGS.backbones, [float(t) for t in FLAGS.targets], settings,
                       {bb: full_dims(bb) for bb in FLAGS.backbones})
  out = (REPO / FLAGS.out) if not os.path.isabs(FLAGS.out) else pathlib.Path(FLAGS.out)
  table.write(rows, out, settings, wd)
  print(table.markdown(rows))


if __name__ == "__main__":
  app.run(main)
