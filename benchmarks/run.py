"""Benchmark suite: each figure against its target and against this machine's physical limit.

  python benchmarks/run.py                          # every figure
  python benchmarks/run.py --figures P1c,P2 --json OUT.json

At start it measures the machine (fp32 matmul GFLOP/s with numpy at 2048³, memory GB/s with a large
copy), so each figure's "limit" is computed for the machine it runs on, in the same run. Timings are
medians over several repetitions after a warm-up; they are printed, never asserted.

Figures (Gowalla, paper settings unless stated):
  P1a stage-1 train step, NCF-MLP backbone (10 groups × 6 rows)    target ≤ 12 ms
  P1b stage-1 train step, LightGCN backbone                         target ≤ 0.5 s
  P1c stage-1 train step, MF backbone                               target ≤ 1 ms
  P2  full-ranking evaluation of all 29,858 users (MF, LightGCN)    target ≤ 5 s
  P3  wall time to the 0.5-sparsity snapshot, MLP backbone          target ≤ 20 min
      measured from a finished stage 1 with --p3_workdir=DIR (its prune/summary.json: wall seconds
      from the first stage-1 step to the snapshot); without it, estimated as P1a × --p3_steps
  P5  peak resident memory, LightGCN training (a subprocess)        target ≤ 2 GiB
  P6  packed file bytes / min(CSR, bitmap) bytes from nnz and shape target ≤ 1.05
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_string("figures", "P1a,P1b,P1c,P2,P3,P5,P6", "Comma-separated figures to run.")
flags.DEFINE_string("json", "", "Write {figure: {measured, unit, target, limit, meets_target}}.")
flags.DEFINE_integer("reps", 5, "Timed repetitions (blocks) per training figure, after warm-up.")
flags.DEFINE_integer("p3_steps", 710_000, "Stage-1 steps to the 0.5-sparsity snapshot for P3's "
                     "estimate: the faithful MLP run (and the original code, run on this machine) "
                     "reach 0.16 at ~103k steps and 0.27 at 227k, gaining ~0.02 per 41.5k-step "
                     "epoch after that, so ~710k (README, Faithful vs fast). The issue's ~100k for "
                     "the original did not reproduce.")
flags.DEFINE_string("p3_workdir", "", "A train.py workdir whose stage 1 (MLP backbone, paper "
                    "settings) reached the 0.5 target: P3 is then its measured wall time.")

TARGETS = {"P1a": (12.0, "ms"), "P1b": (0.5, "s"), "P1c": (1.0, "ms"), "P2_mf": (5.0, "s"),
           "P2_lightgcn": (5.0, "s"), "P3": (20.0, "min"), "P5": (2.0, "GiB"), "P6": (1.05, "ratio")}


def measure_machine():
  """fp32 matmul GFLOP/s (numpy, 2048³, best of 3) and memory GB/s (copy of 512 MiB, best of 3)."""
  a = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
  a @ a
  best = min(_timed(lambda: a @ a) for _ in range(3))
  flops = 2 * 2048 ** 3 / best
  x = np.ones(128 * 2 ** 20, np.float32)
  y = np.empty_like(x)
  np.copyto(y, x)
  best = min(_timed(lambda: np.copyto(y, x)) for _ in range(3))
  bw = 2 * x.nbytes / best  # read + write
  return {"matmul_gflops": flops / 1e9, "memory_gbs": bw / 1e9}


def _p3_measured(workdir):
  """{'seconds', 'step'} of the 0.5 target in WORKDIR/prune/summary.json.

  Raises:
    FileNotFoundError / ValueError: no finished stage 1 there, or its 0.5 target was not reached
      (a P3 figure must come from a run that got there).
  """
  path = os.path.join(workdir, "prune", "summary.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--p3_workdir: {path} does not exist (stage 1 not finished there)")
  with open(path) as f:
    summary = json.load(f)
  hit = [t for t in summary["targets"] if abs(t["target_sparsity"] - 0.5) < 1e-3 and t["reached"]]
  if not hit:
    raise ValueError(f"--p3_workdir: {path} has no reached 0.5 target: {summary['targets']}")
  if len(summary["targets"]) > 1 and summary["final_step"] > hit[0]["step"] + 1:
    raise ValueError(f"--p3_workdir: {path} ran on past the 0.5 snapshot (other targets), so its "
                     "wall time is not the time to 0.5; use a run with target_sparsities=(0.5,)")
  return {"seconds": float(summary["seconds"]), "step": int(hit[0]["step"])}


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _config(module, **overrides):
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module(f"configs.{module}").get_config()
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = getattr(node, p)
    setattr(node, last, v)
  return c


def _stage(module, stage, reps, **overrides):
  import timing  # pylint: disable=g-import-not-at-top
  from cerp_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  c = _config(module, **overrides)
  return timing.time_stage(c, data_lib.load_interactions(c), stage, reps)


def _eval(module, workers=None, score_only=False, **overrides):
  import timing  # pylint: disable=g-import-not-at-top
  from cerp_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  c = _config(module, **overrides)
  return timing.time_eval(c, data_lib.load_interactions(c), workers, score_only)


_P5_CHILD = r"""
import sys, resource
sys.path.insert(0, '.')
sys.path.insert(0, 'benchmarks')
import timing
from cerp_jax import data as D
from configs import gowalla_lightgcn
c = gowalla_lightgcn.get_config()
c.prune.steps_per_block = 5
c.retrain.steps_per_block = 3
d = D.load_interactions(c)
timing.time_stage(c, d, 'prune', 1)
timing.time_stage(c, d, 'retrain', 1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main(argv):
  del argv
  from cerp_jax import logs  # pylint: disable=g-import-not-at-top
  logs.setup()
  import jax  # pylint: disable=g-import-not-at-top
  want = [f.strip() for f in FLAGS.figures.split(",") if f.strip()]
  m = measure_machine()
  flops, bw = m["matmul_gflops"] * 1e9, m["memory_gbs"] * 1e9
  print(f"machine: {jax.devices()[0]}, fp32 matmul {m['matmul_gflops']:.0f} GFLOP/s, memory "
        f"{m['memory_gbs']:.1f} GB/s", flush=True)
  out = {"machine": m, "device": str(jax.devices()[0])}

  def put(fig, measured, limit, note=""):
    target, unit = TARGETS[fig]
    out[fig] = {"measured": measured, "unit": unit, "target": target, "limit": limit,
                "meets_target": bool(measured <= target), "note": note}
    print(f"  {fig}: {measured:.4g} {unit} (target {target} {unit}, limit ≈ {limit:.3g} {unit}) "
          f"{note}", flush=True)

  p1a = None
  if "P1a" in want or ("P3" in want and not FLAGS.p3_workdir):
    r = _stage("gowalla_mlp", "prune", FLAGS.reps, **{"prune.steps_per_block": 200})
    p1a = r["ms_per_step"]
    if "P1a" in want:
      put("P1a", p1a, 1e3 * 1e9 / flops, "(≈ 1 GFLOP of MLP + Adam per step)")
  if "P1b" in want:
    r = _stage("gowalla_lightgcn", "prune", max(2, FLAGS.reps // 2),
               **{"prune.steps_per_block": 10})
    put("P1b", r["ms_per_step"] / 1e3, 7.5e9 / bw, "(≈ 7.5 GB of edge traffic per step)")
  if "P1c" in want:
    r = _stage("gowalla_mf", "prune", FLAGS.reps)
    # P, Q, S_P, S_Q and Adam's m, v: 12 arrays of 128k floats read and written per step
    put("P1c", r["ms_per_step"], 1e3 * 12 * 2 * 128_000 * 4 / bw)
  if "P2" in want:
    for name, module in (("P2_mf", "gowalla_mf"), ("P2_lightgcn", "gowalla_lightgcn")):
      r = _eval(module)
      n_users, n_items, d = r["num_users"], 40981, 128
      put(name, r["seconds"], 2 * n_users * n_items * d / flops,
          f"({r['num_users']} users, full ranking; first call incl. compile "
          f"{r['first_call_seconds']:.1f} s)")
      # Where the time goes: scoring alone, and one batch at a time (no overlap of one batch's
      # single-threaded top-K with the next batch's matmul).
      s = _eval(module, score_only=True)
      seq = _eval(module, workers=1)
      out[name]["breakdown"] = {"scoring_s": s["seconds"], "one_batch_at_a_time_s": seq["seconds"]}
      print(f"      breakdown: scoring (matmul) alone {s['seconds']:.2f} s; one batch at a time "
            f"{seq['seconds']:.2f} s", flush=True)
  if "P3" in want:
    if FLAGS.p3_workdir:
      measured = _p3_measured(FLAGS.p3_workdir)
      put("P3", measured["seconds"] / 60, 1e9 / flops * measured["step"] / 60,
          f"(MEASURED: stage 1 of {FLAGS.p3_workdir}, 0.5 snapshot at step {measured['step']:,})")
    else:
      est = p1a * FLAGS.p3_steps / 1e3 / 60
      put("P3", est, 1e9 / flops * FLAGS.p3_steps / 60,
          f"(ESTIMATE: P1a × {FLAGS.p3_steps} steps, not a measured run)")
  if "P5" in want:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", _P5_CHILD], cwd=repo, capture_output=True,
                       text=True, timeout=1800)
    if r.returncode != 0:
      print(r.stderr[-2000:])
    else:
      kib = int(r.stdout.strip().splitlines()[-1])
      put("P5", kib / 2 ** 20, 0.5, "(ru_maxrss of a process running LightGCN stage-1 and "
          "stage-2 steps on Gowalla)")
  if "P6" in want:
    from cerp_jax import packing  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(0)
    worst = 0.0
    for density in (0.5, 0.2, 0.05):
      tables = {}
      for k in ("P", "Q"):
        t = rng.standard_normal((1000, 128)).astype(np.float32)
        t[rng.random(t.shape) >= density] = 0
        tables[k] = t
      blob, rep = packing.pack(tables)
      ideal = sum(packing.ideal_bytes(r["nonzeros"], *r["shape"]) for r in rep["tables"].values())
      worst = max(worst, len(blob) / ideal)
    put("P6", worst, 1.0, "(worst of densities 0.5, 0.2, 0.05 on [1000, 128] × 2)")
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(out, f, indent=2)
  print("\n| figure | measured | target | limit here | meets |")
  print("|---|---|---|---|---|")
  for fig in TARGETS:
    if fig in out:
      r = out[fig]
      print(f"| {fig} | {r['measured']:.4g} {r['unit']} | ≤ {r['target']} {r['unit']} | "
            f"{r['limit']:.3g} {r['unit']} | {'yes' if r['meets_target'] else 'no'} |")


if __name__ == "__main__":
  app.run(main)
