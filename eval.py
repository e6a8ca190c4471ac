"""Restores what train.py wrote, packs the pruned tables, checks them, evaluates on test, reports.

  python eval.py --workdir=runs/gowalla_mf
  python eval.py --workdir=runs/gowalla_mf --mesh_shape=8     # scoring batches split over 8 devices
  python eval.py --workdir=runs/gowalla_mf --allow_fallback   # accept an older checkpoint (recorded)
  python eval.py --workdir=runs/gowalla_mf --value_dtype=int8  # pack int8 (default: the run's
                                                               # config.pack.value_dtype, float32)

Prints a Markdown table and writes WORKDIR/eval.json ({"results": [one object per budget]}) and the
packed tables WORKDIR/packed/<tag>.cerp. Multi-host: start it in every process with
$CERP_DISTRIBUTED=1 (and $JAX_COORDINATOR_ADDRESS, $CERP_NUM_PROCESSES, $CERP_PROCESS_ID where JAX
cannot detect the cluster); process 0 writes the files.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax

from cerp_jax import cli
from cerp_jax import finalize
from cerp_jax import runlock
from cerp_jax import sharding as shard_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_integer("user_sample", -1, "Test users to score: -1 = the config's "
                     "eval.test_user_sample, 0 = all (full ranking), n = a seeded sample of n.")
flags.DEFINE_integer("batch_size", 0, "Users per scoring batch (0 = the config's).")
flags.DEFINE_string("mesh_shape", "", "Device mesh sizes, comma-separated, for the training "
                    "config's mesh_axes ('' = its mesh_shape; '8', '4,2', '-1,2').")
flags.DEFINE_bool("allow_fallback", False, "Accept a budget evaluated from an older retrain "
                  "checkpoint because the newest is unreadable or fails its digests (recorded in "
                  "eval.json either way; without this flag such a fallback exits with status 2).")
flags.DEFINE_string("reference", None, "A finished full-table workdir (train.py --config=…:full) "
                    "or a recorded reference .json (recall@20, ndcg@20, source; e.g. docs/results/"
                    "reference_gowalla_lightgcn_d64.json): each budget then reports the share of its "
                    "test Recall@20 that it keeps.")
flags.DEFINE_enum("value_dtype", None, ["float32", "float16", "int8"], "Value dtype of the packed "
                  "files (default: the training config's pack.value_dtype).")
flags.DEFINE_list("quantized", ["float16", "int8"], "Value dtypes of post-training quantization "
                  "to evaluate besides the packed file's (config.pack.value_dtype), each against "
                  "float32: packed bytes, metrics and their change ('' = none).")
flags.mark_flags_as_required(["workdir"])


def _evaluate_locked(workdir: str, **kwargs) -> dict:
  """finalize.evaluate_workdir under the workdir's lock (no train.py or eval.py beside it)."""
  if not os.path.isdir(workdir):  # evaluate_workdir names what is missing
    return finalize.evaluate_workdir(workdir, **kwargs)
  with runlock.hold(workdir, shard_lib.is_primary()):
    return finalize.evaluate_workdir(workdir, **kwargs)


def main(argv):
  if len(argv) > 1:
    cli.cli_error(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  cli.setup()
  shard_lib.distributed_init(None)  # only if the environment asks (before any device is touched)
  if not shard_lib.is_primary():
    logging.set_verbosity(logging.WARNING)
  logging.info("local devices: %s", jax.local_devices())
  mesh_shape = tuple(int(s) for s in FLAGS.mesh_shape.split(",")) if FLAGS.mesh_shape else None
  out = cli.run_cli(_evaluate_locked, FLAGS.workdir, user_sample=FLAGS.user_sample,
                     batch_size=FLAGS.batch_size, mesh_shape=mesh_shape,
                     allow_fallback=FLAGS.allow_fallback, reference=FLAGS.reference,
                     quantized=tuple(FLAGS.quantized), value_dtype=FLAGS.value_dtype)
  if shard_lib.is_primary():
    print(finalize.markdown_table(out))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
