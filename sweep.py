"""Baselines at equal memory: every method × budget → results.csv, results.md, frontier.png.

  python sweep.py --config=configs/sweep_gowalla_mf.py --workdir=runs/sweep_gowalla_mf
  python sweep.py --config=configs/sweep_gowalla_mf.py --solve_only   # settings per method × budget
  python sweep.py --config=configs/sweep_gowalla_mf.py --workdir=DIR --report_only  # finished runs
  python sweep.py --config=… --workdir=NEW --import_records=OLD/records.jsonl   # continue elsewhere

Rerunning the same command skips finished runs and resumes unfinished ones (cerp_jax/sweep.py).
"""

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from cerp_jax import cli
from cerp_jax import sweep as sweep_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Sweep configuration file (configs/sweep_*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the sweep (one subfolder per run).")
flags.DEFINE_bool("solve_only", False, "Only solve the budgets and print the settings.")
flags.DEFINE_bool("report_only", False, "Train nothing: write results.csv/.md and frontier.png from "
                  "the runs finished so far.")
flags.DEFINE_string("import_records", None, "records.jsonl of an earlier workdir of this sweep (e.g. "
                    "docs/results/…_runs.jsonl): its runs count as finished here and are reported.")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    cli.cli_error(f"unexpected arguments {argv[1:]} (flags are --name=value)")
  if not FLAGS.workdir and not FLAGS.solve_only:
    cli.cli_error("--workdir is required (unless --solve_only)")
  cli.setup()
  logging.info("local devices: %s", jax.local_devices())
  cli.run_cli(sweep_lib.run_sweep, FLAGS.config, FLAGS.workdir, solve_only=FLAGS.solve_only,
               report_only=FLAGS.report_only, import_from=FLAGS.import_records)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
