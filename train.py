"""Trains CERP (stage 1 prune + stage 2 retrain) or a full-table reference.

  python train.py --config=configs/gowalla_mf.py --workdir=runs/gowalla_mf
  python train.py --config=configs/gowalla_mf.py --workdir=runs/x --config.stage=prune
  python train.py --config=configs/gowalla_mf.py:full --workdir=runs/gowalla_mf_full

Rerunning the same command resumes from the checkpoints in --workdir. The same command runs on one
device, several GPUs or a TPU slice (docs/scaling_out.md); with --config.distributed=True (or
$CERP_DISTRIBUTED=1) every process of a multi-host run starts it, and process 0 writes the files.
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cerp_jax import cli
from cerp_jax import finalize
from cerp_jax import sharding as shard_lib
from cerp_jax import train as train_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    cli.cli_error(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  cli.setup()
  shard_lib.distributed_init(FLAGS.config)  # before anything touches a device
  if not shard_lib.is_primary():  # process 0 logs and writes; the others only warn
    logging.set_verbosity(logging.WARNING)
    FLAGS.config.progress_bar = False
  logging.info("JAX process %d/%d, local devices: %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  results = cli.run_cli(train_lib.train_and_evaluate, FLAGS.config, FLAGS.workdir)
  if results and shard_lib.is_primary():
    print(finalize.training_table(results))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
