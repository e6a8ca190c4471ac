"""Scaling table: the full table vs CERP (b = the smallest valid bucket size ≈ √N) as N grows.

  python benchmarks/scaling.py                                   # N = 1e4 … 1e7, MF backbone, d=128
  python benchmarks/scaling.py --sizes=1e4,1e5 --json=OUT.json

For each N (users = items = N/2; 10 training interactions per entity, i.e. one epoch of 10·N BPR
groups, as Gowalla's ≈ 10.3) and each method, a child process builds the MF model with the stage-1
protocol of ``configs/gowalla_mf.py`` (10 groups × (1 + 5) rows per step, clip → coupled decay →
Adam) and times fused, donated blocks of train steps on uniformly random (user, item) ids — the
step's cost does not depend on the interaction graph for MF, so no graph is built:

- full: the [N, d] table trained densely (the step the uncompressed model takes);
- cerp: P, Q of [b, d] with their [b, d] thresholds, the stage-1 step (soft thresholds, −Σ tanh²,
  non-zero counting), b = ``embeddings.smallest_valid_bucket_size(N)`` = ceil(√N).

Reported per (N, method): embedding parameters, the step's predicted peak of live arrays (XLA's
``memory_analysis()`` of the compiled block: arguments + temporaries + outputs not aliased), the
child's peak resident memory (``ru_maxrss``; it includes ≈ 0.3 GiB of runtime), the median step time
after a warm-up block, and an epoch estimate (N steps). Before building anything a configuration
whose predicted peak exceeds ``--memory_limit_gib`` (default: this machine's RAM) is recorded as
"does not fit" and skipped, so the table says where the full table stops fitting. Timings are
printed, never asserted; run it on a quiet machine.
"""

import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("sizes", "1e4,3e4,1e5,3e5,1e6,3e6,1e7", "Comma-separated N (entities).")
flags.DEFINE_string("methods", "full,cerp", "Comma-separated methods: full, cerp.")
flags.DEFINE_integer("dim", 128, "Embedding width d.")
flags.DEFINE_integer("interactions_per_entity", 10, "Training interactions per entity (epoch size).")
flags.DEFINE_integer("reps", 3, "Timed blocks after the warm-up block.")
flags.DEFINE_float("memory_limit_gib", 0.0, "Skip configurations predicted above this (0: RAM).")
flags.DEFINE_string("json", "", "Write the rows as JSON.")
flags.DEFINE_string("child", "", "Internal: run one 'N,method' and print its JSON row.")


def _machine_ram_gib() -> float:
  with open("/proc/meminfo", encoding="utf-8") as f:
    for line in f:
      if line.startswith("MemTotal:"):
        return int(line.split()[1]) / 2 ** 20
  raise RuntimeError("/proc/meminfo has no MemTotal")


def _config(method: str, n: int, dim: int):
  from cerp_jax import embeddings as emb_lib  # pylint: disable=g-import-not-at-top
  from configs import gowalla_mf  # pylint: disable=g-import-not-at-top
  c = gowalla_mf.get_config("full" if method == "full" else "")
  c.model.dim = dim
  if method == "cerp":
    c.model.bucket_size = emb_lib.smallest_valid_bucket_size(n)
  return c


def run_child(n: int, method: str, dim: int, reps: int, limit_gib: float) -> dict:
  """Builds, sizes and times one (N, method) in this process; returns its row."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import scipy.sparse as sp  # pylint: disable=g-import-not-at-top
  from cerp_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from cerp_jax import embeddings as emb_lib  # pylint: disable=g-import-not-at-top
  from cerp_jax import models  # pylint: disable=g-import-not-at-top
  from cerp_jax import train as T  # pylint: disable=g-import-not-at-top

  c = _config(method, n, dim)
  pc = c.prune
  num_users = n // 2
  num_items = n - num_users
  empty = sp.csr_matrix((num_users, num_items), dtype=np.float32)
  data = data_lib.Interactions("synthetic", num_users, num_items, empty, empty, empty)
  prune = method == "cerp"
  model = models.create_model(c, data, emb_lib.PRUNE if prune else emb_lib.DENSE)
  # Both methods take stage 1's optimizer and step (the full table without the regularizer and
  # the snapshots); CERP snapshots one budget (sparsity 0.5).
  tx = T.make_optimizer(pc)
  fn = T.make_block_fn(model, tx, dataclasses.replace(T.step_config(c, T.PRUNE), prune=prune))
  rows = pc.num_negatives + 1
  make_state = lambda: T.create_train_state(
      c, model, T.PRUNE if prune else T.RETRAIN, models.init_variables(model, c.seed, rows),
      targets=(0.5,), tx=tx)

  abstract = jax.eval_shape(make_state)
  emb_params = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(
      abstract.params["embedding"])))
  # Steps per timed block: ~2e8 parameter updates per block, between 2 and 200 steps.
  steps = int(max(2, min(200, 2e8 // max(emb_params, 1))))
  groups = pc.groups_per_step
  blk_shapes = {"users": jax.ShapeDtypeStruct((steps, groups), jnp.int32),
                "items": jax.ShapeDtypeStruct((steps, groups, rows), jnp.int32),
                "group_mask": jax.ShapeDtypeStruct((steps, groups), jnp.bool_),
                "step_mask": jax.ShapeDtypeStruct((steps,), jnp.bool_)}
  compiled = fn.lower(abstract, blk_shapes, jnp.int32(0), {}).compile()
  ma = compiled.memory_analysis()
  predicted = (ma.argument_size_in_bytes + ma.temp_size_in_bytes + ma.output_size_in_bytes -
               ma.alias_size_in_bytes)
  row = {"N": n, "method": method, "dim": dim,
         "setting": f"d={dim}" if method == "full" else f"b={c.model.bucket_size}",
         "embedding_params": emb_params, "embedding_mib": emb_params * 4 / 2 ** 20,
         "predicted_peak_gib": predicted / 2 ** 30, "steps_per_block": steps}
  if predicted / 2 ** 30 > limit_gib:
    row.update(fits=False, note=f"predicted {predicted / 2 ** 30:.1f} GiB > {limit_gib:.1f} GiB")
    return row
  state = make_state()
  rng = np.random.default_rng(0)
  times = []
  for _ in range(reps + 1):
    blk = {"users": rng.integers(0, num_users, (steps, groups), dtype=np.int32),
           "items": rng.integers(0, num_items, (steps, groups, rows), dtype=np.int32),
           "group_mask": np.ones((steps, groups), bool), "step_mask": np.ones((steps,), bool)}
    blk = jax.device_put(blk)
    t0 = time.perf_counter()
    state, m = compiled(state, blk, jnp.int32(0), {})
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
    if not bool(np.all(np.asarray(m["active"]))):  # e.g. CERP met its budget and skips steps
      raise RuntimeError(f"N={n} {method}: some timed steps were skipped; time fewer steps")
  ms = 1e3 * float(np.median(times[1:])) / steps
  steps_per_epoch = FLAGS.interactions_per_entity * n // groups
  row.update(fits=True, ms_per_step=ms, epoch_s_estimate=ms / 1e3 * steps_per_epoch,
             peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
             note="")
  return row


def _fmt_row(r) -> str:
  if r.get("failed"):
    return f"| {r['N']:.0e} | {r['method']} | ? | – | – | – | – | FAILED: {r['note']} | – |"
  if not r.get("fits"):
    return (f"| {r['N']:.0e} | {r['method']} | {r['setting']} | {r['embedding_params']:,} | "
            f"{r['embedding_mib']:,.1f} | {r['predicted_peak_gib']:.2f} | – | does not fit "
            f"({r['note']}) | – |")
  return (f"| {r['N']:.0e} | {r['method']} | {r['setting']} | {r['embedding_params']:,} | "
          f"{r['embedding_mib']:,.1f} | {r['predicted_peak_gib']:.2f} | {r['peak_rss_gib']:.2f} | "
          f"{r['ms_per_step']:.3f} | {r['epoch_s_estimate']:,.0f} |")


def main(argv):
  del argv
  limit = FLAGS.memory_limit_gib or _machine_ram_gib()
  if FLAGS.child:
    n, method = FLAGS.child.split(",")
    print(json.dumps(run_child(int(float(n)), method, FLAGS.dim, FLAGS.reps, limit)))
    return
  sizes = [int(float(s)) for s in FLAGS.sizes.split(",") if s.strip()]
  methods = [m.strip() for m in FLAGS.methods.split(",") if m.strip()]
  bad = [m for m in methods if m not in ("full", "cerp")]
  if bad:
    raise app.UsageError(f"--methods: unknown {bad}; expected full and/or cerp")
  print(f"MF backbone, d={FLAGS.dim}, stage-1 protocol (10 groups × 6 rows per step); memory limit "
        f"{limit:.1f} GiB; load average {os.getloadavg()[0]:.1f}", flush=True)
  header = ("| N | method | setting | embedding params | embedding MiB | predicted peak GiB "
            "(XLA) | peak RSS GiB | ms / step | epoch s (est.) |\n|---|---|---|---|---|---|---|---|---|")
  print(header, flush=True)
  rows = []
  for n in sizes:
    for method in methods:
      cmd = [sys.executable, os.path.abspath(__file__), f"--child={n},{method}", f"--dim={FLAGS.dim}",
             f"--reps={FLAGS.reps}", f"--memory_limit_gib={limit}",
             f"--interactions_per_entity={FLAGS.interactions_per_entity}"]
      r = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if r.returncode != 0:
        row = {"N": n, "method": method, "fits": None, "failed": True,
               "note": f"child exit {r.returncode}: {r.stderr.strip()[-300:]}"}
      else:
        row = json.loads(r.stdout.strip().splitlines()[-1])
      rows.append(row)
      print(_fmt_row(row), flush=True)
  if FLAGS.json:
    from cerp_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    workdir_lib.write_json(FLAGS.json, rows, sort_keys=False)


if __name__ == "__main__":
  app.run(main)
