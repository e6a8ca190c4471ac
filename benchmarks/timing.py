"""Timing helpers shared by benchmarks/throughput.py and benchmarks/run.py (no flags here)."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import models
from cerp_jax import sampler as sampler_lib
from cerp_jax import sharding as shard_lib
from cerp_jax import train as T


def time_stage(config, data, stage: str, reps: int = 5) -> dict:
  """Median time of one fused, donated stage block (after a warm-up block) → per-step figures."""
  sc_cfg = config.prune if stage == "prune" else config.retrain
  mode = emb_lib.PRUNE if stage == "prune" else (
      emb_lib.RETRAIN if config.model.embedding == "cerp" else emb_lib.DENSE)
  model = models.create_model(config, data, mode)
  consts = models.model_consts(config, data)
  fn = T.make_block_fn(model, T.make_optimizer(sc_cfg), T.step_config(config, stage))
  state = T.create_train_state(config, model, stage)
  sampler = sampler_lib.BPRSampler(data.train, sc_cfg.num_negatives, seed=0)
  t0 = time.perf_counter()
  users, items = sampler.epoch(0)
  sample_s = time.perf_counter() - t0
  blocks, _ = sampler_lib.to_steps(users, items, sc_cfg.groups_per_step, sc_cfg.steps_per_block)
  full = np.nonzero(blocks["step_mask"].all(axis=1))[0]  # blocks without padding steps
  if full.size == 0:
    raise ValueError(f"an epoch has fewer than steps_per_block={sc_cfg.steps_per_block} steps")
  idx = [full[i % full.size] for i in range(reps + 1)]
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


def time_eval(config, data, workers=None, score_only: bool = False) -> dict:
  """One test evaluation (full ranking, or the config's seeded sample), after a warm-up call.

  ``workers``: the evaluator's dispatching threads (None: its default; 1: one batch at a time).
  ``score_only``: time only the scoring of the same user batches (no masking, top-K or metrics),
  the matmul share of an evaluation.
  """
  mode = emb_lib.RETRAIN if config.model.embedding == "cerp" else emb_lib.DENSE
  model = models.create_model(config, data, mode)
  variables = {**models.init_variables(model, config.seed, 2), **models.model_consts(config, data)}
  ec = config.eval
  ev = evaluation.Evaluator(data, "test", ec.ks, ec.batch_size, user_sample=ec.test_user_sample,
                            seed=ec.sample_seed, workers=workers,
                           plan=shard_lib.ShardingPlan.from_config(config))  # as train/eval.py
  score_fn = models.make_score_fn(model, data.num_users)
  vectors_fn = models.make_vectors_fn(model)
  if score_only:
    fn = jax.jit(lambda a, u: jnp.sum(score_fn(a, u), axis=1))  # a [B] output keeps the [B, I] work
    args = (variables, vectors_fn(variables))
    times = []
    for _ in range(2):
      t0 = time.perf_counter()
      outs = [fn(args, b["users"]) for b in ev.batches]
      jax.block_until_ready(outs)
      times.append(time.perf_counter() - t0)
    return {"seconds": times[1], "first_call_seconds": times[0],
            "num_users": len(ev.users), "batch_size": ev.batch_size}
  res = ev.evaluate(score_fn, (variables, vectors_fn(variables)))  # warm-up (compile)
  first = res["seconds"]
  res = ev.evaluate(score_fn, (variables, vectors_fn(variables)))
  return {"seconds": res["seconds"], "first_call_seconds": first,
          "num_users": res["num_users_evaluated"], "num_users_total": res["num_users_total"],
          "sampled": res["sampled"], "batch_size": ec.batch_size,
          "full_ranking_estimate_s": res["seconds"] * res["num_users_total"] /
                                     res["num_users_evaluated"]}


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


def _timed(fn):
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t
