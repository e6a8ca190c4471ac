"""Where stage 1's soft thresholds stand against the values they prune (figures only).

  python benchmarks/threshold_margins.py --workdir=runs/gowalla_mlp_parity_p3 [--checkpoint=N]

Restores a stage-1 checkpoint (default: the newest readable one) of a CERP or PEP run and prints, per
pruned table T with thresholds S_T: the fraction of entries alive (|v| > σ(s)), and over the
alive entries the median |v|, the median σ(s), the median margin |v| − σ(s), and the fraction with
|v| > 0.5. Coupled weight decay can raise σ(s) only towards σ(0) = 0.5 (it pulls s to 0, never past
it), so entries above 0.5 can be pruned only through the loss gradient. Used for docs/results/faithful_vs_fast.md's account
of why the NCF-MLP stage 1 slows after onset. ``--json`` writes the figures.

Exits with status 1 and a message naming the directory when there is no stage-1 checkpoint there
(nothing is created), and raises cerp_jax.checkpoint.CheckpointError for an unreadable one.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from cerp_jax import checkpoint as ckpt_lib
from cerp_jax import embeddings as emb_lib
from cerp_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir with prune/checkpoints.", required=True)
flags.DEFINE_integer("checkpoint", None, "Checkpoint number (default: the newest readable one).")
flags.DEFINE_string("json", "", "Write {table: {...figures}} and the checkpoint's step here.")


def margins(params: dict, gk: float = 1.0) -> dict:
  """Figures for every table T of ``params`` that has thresholds ``S_T`` (element-wise or broadcast).

  Args:
    params: the embedding's parameters, e.g. {'P': [b, d], 'Q': [b, d], 'S_P': ..., 'S_Q': ...}.
    gk: the threshold multiplier at that step (1, or ``1 + step/prune.gk_ramp_steps``); the
      threshold figures are the effective ``gk·σ(s)``.
  Returns:
    {T: {'alive', 'median_abs_value', 'median_threshold', 'median_margin', 'above_half'}} over the
    alive entries (fractions in [0, 1]; NaN where nothing is alive).
  """
  out = {}
  for name, s in params.items():
    if not name.startswith("S_") or name[2:] not in params:
      continue
    w = jnp.asarray(params[name[2:]], jnp.float32)
    alive = np.asarray(emb_lib.soft_threshold(w, jnp.asarray(s, jnp.float32), gk) != 0)  # model's rule
    v = np.abs(np.asarray(w, np.float64))
    th = gk * np.broadcast_to(np.asarray(jax.nn.sigmoid(jnp.asarray(s, jnp.float32)), np.float64),
                              v.shape)
    med = lambda x: float(np.median(x)) if x.size else float("nan")
    out[name[2:]] = {"alive": float(alive.mean()), "median_abs_value": med(v[alive]),
                     "median_threshold": med(th[alive]), "median_margin": med(v[alive] - th[alive]),
                     "above_half": float((v[alive] > 0.5).mean()) if alive.any() else float("nan")}
  return out


def main(argv):
  del argv
  directory = os.path.abspath(os.path.join(workdir_lib.prune_dir(FLAGS.workdir), "checkpoints"))
  if not os.path.isdir(directory):  # checked first: CheckpointStore would create it
    sys.exit(f"threshold_margins: no stage-1 checkpoint in {directory} (no such directory)")
  store = ckpt_lib.CheckpointStore(directory)
  n = FLAGS.checkpoint if FLAGS.checkpoint is not None else store.latest()
  if n is None:
    sys.exit(f"threshold_margins: no stage-1 checkpoint in {directory}")
  meta = store.restore_meta(n)
  try:
    state = ocp.StandardCheckpointer().restore(os.path.join(store.directory, str(n), "state"))
  except Exception as e:  # orbax raises several types for damaged files
    raise ckpt_lib.CheckpointError(f"cannot read checkpoint {n} in {store.directory}: {e}") from e
  ramp = 0
  config_path = workdir_lib.config_path(FLAGS.workdir)
  if os.path.exists(config_path):
    ramp = int(workdir_lib.read_json(config_path).get("prune", {}).get("gk_ramp_steps", 0) or 0)
  gk = 1.0 + int(meta.get("step", 0)) / ramp if ramp > 0 else 1.0
  figures = margins(state["params"]["embedding"], gk)
  print(f"{FLAGS.workdir}: checkpoint {n}, step {meta.get('step')}, epoch {meta.get('epoch')}, "
        f"threshold multiplier gk {gk:.3f}")
  for t, f in figures.items():
    print(f"  {t}: alive {f['alive']:.3f}; alive entries: median |v| {f['median_abs_value']:.3f}, "
          f"median σ(s) {f['median_threshold']:.3f}, median margin {f['median_margin']:.3f}, "
          f"|v| > 0.5 {f['above_half']:.3f}")
  if FLAGS.json:
    workdir_lib.write_json(FLAGS.json, {"checkpoint": n, "step": meta.get("step"), "tables": figures})


if __name__ == "__main__":
  app.run(main)
