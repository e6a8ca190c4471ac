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

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from cerp_jax import data as data_lib
from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import logs
from cerp_jax import models
from cerp_jax import pruning
from cerp_jax import sampler as sampler_lib
from cerp_jax import train as T

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/gowalla_mf.py", "Config.", lock_config=True)
flags.DEFINE_integer("blocks", 5, "Timed blocks per stage (after one warm-up block).")
flags.DEFINE_string("json", "", "Also write the figures to this JSON file.")
flags.DEFINE_bool("eval", True, "Time one test evaluation.")


def _time_stage(config, data, stage):
  sc_cfg = config.prune if stage == "prune" else config.retrain
  mode = emb_lib.PRUNE if stage == "prune" else (
      emb_lib.RETRAIN if config.model.embedding == "cerp" else emb_lib.DENSE)
  model = T.build_model(config, data, mode)
  tx = T.make_optimizer(sc_cfg)
  sc = T.StepConfig(eta=config.prune.eta, gamma_init=1.0, gamma_decay=0.5,
                    l2_penalty=sc_cfg.l2_penalty, prune=stage == "prune",
                    unique_users=config.model.backbone == "lightgcn")
  consts = T.model_consts(config, data)
  fn = T.make_block_fn(model, tx, sc)
  variables = T.init_variables(model, config.seed, sc_cfg.num_negatives + 1)
  params = variables["params"]
  prune_state = None
  if stage == "prune":
    tables = model.apply(variables, method=models.Recommender.tables)
    budgets = pruning.budgets(config.target_sparsities, model.embedding.num_parameters())
    prune_state = pruning.init_prune_state(
        budgets, tables, {k: jnp.copy(params["embedding"][k]) for k in model.embedding.prunable})
  state = T.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables.get("batch_stats", {}),
                       masks=variables.get("masks", {}), opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)), prune=prune_state)
  sampler = sampler_lib.BPRSampler(data.train, sc_cfg.num_negatives, seed=0)
  t0 = time.perf_counter()
  users, items = sampler.epoch(0)
  sample_s = time.perf_counter() - t0
  blocks, _ = sampler_lib.to_steps(users, items, sc_cfg.groups_per_step, sc_cfg.steps_per_block)
  full = np.nonzero(blocks["step_mask"].all(axis=1))[0]  # blocks without padding steps
  if full.size == 0:
    raise ValueError(f"an epoch has fewer than steps_per_block={sc_cfg.steps_per_block} steps")
  idx = [full[i % full.size] for i in range(FLAGS.blocks + 1)]
  times = []
  for i in idx:
    blk = jax.device_put({k: v[i] for k, v in blocks.items()})
    t0 = time.perf_counter()
    state, m = fn(state, blk, jnp.int32(0), consts)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  steps = sc_cfg.steps_per_block
  sec = float(np.median(times[1:]))
  rows = sc_cfg.groups_per_step * (sc_cfg.num_negatives + 1)
  return {"ms_per_step": 1e3 * sec / steps, "steps_per_s": steps / sec,
          "rows_per_s": steps * rows / sec, "compile_s": times[0], "rows_per_step": rows,
          "epoch_sample_s": sample_s, "steps_per_epoch": -(-len(users) // sc_cfg.groups_per_step),
          "epoch_s_estimate": -(-len(users) // sc_cfg.groups_per_step) * sec / steps}


def _time_eval(config, data):
  mode = emb_lib.RETRAIN if config.model.embedding == "cerp" else emb_lib.DENSE
  model = T.build_model(config, data, mode)
  variables = {**T.init_variables(model, config.seed, 2), **T.model_consts(config, data)}
  ec = config.eval
  ev = evaluation.Evaluator(data, "test", ec.ks, ec.batch_size, user_sample=ec.test_user_sample,
                            seed=ec.sample_seed)
  score_fn = T.make_score_fn(model, data.num_users)
  vectors_fn = T.make_vectors_fn(model)
  res = ev.evaluate(score_fn, (variables, vectors_fn(variables)))  # warm-up (compile)
  first = res["seconds"]
  res = ev.evaluate(score_fn, (variables, vectors_fn(variables)))
  return {"seconds": res["seconds"], "first_call_seconds": first,
          "num_users": res["num_users_evaluated"], "num_users_total": res["num_users_total"],
          "sampled": res["sampled"], "batch_size": ec.batch_size,
          "full_ranking_estimate_s": res["seconds"] * res["num_users_total"] /
                                     res["num_users_evaluated"]}


def main(argv):
  del argv
  logs.setup()
  config = FLAGS.config
  data = data_lib.load_interactions(config)
  out = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
         "dataset": config.data.name, "backbone": config.model.backbone,
         "embedding": config.model.embedding, "dim": config.model.dim}
  if config.model.embedding == "cerp":
    out["prune"] = _time_stage(config, data, "prune")
  out["retrain"] = _time_stage(config, data, "retrain")
  if FLAGS.eval:
    out["eval"] = _time_eval(config, data)
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
    with open(FLAGS.json, "w") as f:
      json.dump(out, f, indent=2)


if __name__ == "__main__":
  app.run(main)
