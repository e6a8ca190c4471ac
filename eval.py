"""Restores what train.py wrote, packs the pruned tables, checks them, evaluates on test, reports.

  python eval.py --workdir=runs/gowalla_mf

Prints a Markdown table and writes WORKDIR/eval.json ({"results": [one object per budget]}) and the
packed tables WORKDIR/packed/<tag>.cerp.
"""

from absl import app
from absl import flags
from absl import logging
import jax

from cerp_jax import logs
from cerp_jax import report

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A train.py workdir.")
flags.DEFINE_integer("user_sample", -1, "Test users to score: -1 = the config's "
                     "eval.test_user_sample, 0 = all (full ranking), n = a seeded sample of n.")
flags.DEFINE_integer("batch_size", 0, "Users per scoring batch (0 = the config's).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  logs.setup()
  logging.info("local devices: %s", jax.local_devices())
  out = report.evaluate_workdir(FLAGS.workdir, user_sample=FLAGS.user_sample,
                                batch_size=FLAGS.batch_size)
  print(report.markdown_table(out))


if __name__ == "__main__":
  app.run(main)
