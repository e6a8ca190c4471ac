"""Training throughput and full-ranking evaluation time for a config (figures, never asserts).

  python benchmarks/throughput.py --config=configs/gowalla_mf.py
  python benchmarks/throughput.py --config=configs/gowalla_mlp.py --blocks=3 --json=out.json

Measures, on the machine it runs on:
  * stage-1 (prune) step: steps/s and scored rows/s (a group of 1 positive + K negatives = 1+K rows),
    with the fused, donated ``lax.scan`` block of ``prune.steps_per_block`` steps;
  * stage-2 (retrain) step, likewise;
  * one evaluation over the test split (full ranking, or the config's seeded user sample).
Each timing is the median over ``--blocks`` blocks after one warm-up (compile) block.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
from ml_collections import config_flags

from cerp_jax import cli
from cerp_jax import data as data_lib
from cerp_jax import workdir as workdir_lib
import timing

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/gowalla_mf.py", "Config.", lock_config=True)
flags.DEFINE_integer("blocks", 5, "Timed blocks per stage (after one warm-up block).")
flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
flags.DEFINE_bool("eval", True, "Time one test evaluation.")


def main(argv):
  del argv
  cli.setup()
  config = FLAGS.config
  data = data_lib.load_interactions(config)
  out = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
         "dataset": config.data.name, "backbone": config.model.backbone,
         "embedding": config.model.embedding, "dim": config.model.dim}
  if config.model.embedding == "cerp":
    out["prune"] = timing.time_stage(config, data, "prune", FLAGS.blocks)
  out["retrain"] = timing.time_stage(config, data, "retrain", FLAGS.blocks)
  if FLAGS.eval:
    out["eval"] = timing.time_eval(config, data)
  print(f"\n{out['dataset']} / {out['backbone']} / {out['embedding']} d={out['dim']} on "
        f"{out['device']}")
  print("| stage | ms/step | steps/s | rows/s | rows/step | est. epoch s | compile s |")
  print("|---|---|---|---|---|---|---|")
  for st in ("prune", "retrain"):
    if st in out:
      r = out[st]
      print(f"| {st} | {r['ms_per_step']:.3f} | {r['steps_per_s']:.0f} | {r['rows_per_s']:.3g} | "
            f"{r['rows_per_step']} | {r['epoch_s_estimate']:.1f} | {r['compile_s']:.1f} |")
  if "eval" in out:
    e = out["eval"]
    who = (f"seeded sample of {e['num_users']}/{e['num_users_total']} users; full ranking of all "
           f"users ≈ {e['full_ranking_estimate_s']:.0f} s" if e["sampled"] else
           f"all {e['num_users']} users (full ranking)")
    print(f"\nevaluation (test, batch {e['batch_size']}): {e['seconds']:.2f} s for {who}")
  if FLAGS.json:
    workdir_lib.write_json(FLAGS.json, out, sort_keys=False)


if __name__ == "__main__":
  app.run(main)
