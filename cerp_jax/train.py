"""Training: stage 1 (prune, snapshot at budgets) and stage 2 (lottery-ticket retrain), resumable.

Spec §2–§5; DECISIONS.md. The hot path is one pure ``train_step(state, batch)``; ``jax.lax.scan`` fuses
``steps_per_block`` of them into one compiled call with the state donated, so Python runs once per
block. Budget snapshots are taken inside the scanned step (exact per step). Each stage checkpoints
with orbax into the workdir and resumes from it: the sampler's epoch sample depends only on
``(seed, epoch)``, so a resumed run continues with the same numbers.

Workdir layout::

  config.json                 the run's config (checked on resume)
  metrics.jsonl               one JSON object per epoch / evaluation
  prune/checkpoints/          stage-1 orbax checkpoints (state incl. snapshots and step-0 tables)
  prune/summary.json          budget → step, epoch, non-zeros
  retrain/<tag>/checkpoints/  stage-2 orbax checkpoints per budget (tag ``sparsity_0.5000`` | ``full``)
  retrain/<tag>/result.json   selection history, best epoch, test metrics of the best checkpoint
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorboardX

from cerp_jax import checkpoint as ckpt_lib
from cerp_jax import data as data_lib
from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import graph as graph_lib
from cerp_jax import losses
from cerp_jax import models
from cerp_jax import packing
from cerp_jax import progress as progress_lib
from cerp_jax import pruning
from cerp_jax import runlock
from cerp_jax import sampler as sampler_lib
from cerp_jax import sharding as shard_lib

# --------------------------------------------------------------------------------------------------
# State, model, optimizer
# --------------------------------------------------------------------------------------------------


@flax.struct.dataclass
class TrainState:
  """Everything a step changes. ``step`` counts applied updates (padding steps excluded)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  masks: Any
  opt_state: Any
  rng: jax.Array  # key data; step t's dropout key is fold_in(rng, t)
  prune: Optional[pruning.PruneState]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static (hashable) settings of a train step."""

  eta: float
  gamma_init: float
  gamma_decay: float
  l2_penalty: float
  prune: bool  # regularizer, non-zero count and snapshots on
  unique_users: bool = False  # regularizer over the batch's unique users (LightGCN)
  gk_ramp_steps: int = 0  # > 0: threshold multiplier gk = 1 + step / gk_ramp_steps (else gk = 1)


def threshold_multiplier(step: jax.Array, gk_ramp_steps: int) -> jax.Array:
  """``gk = 1 + step / gk_ramp_steps`` float32 (the NCF-MLP ``:fast`` preset's schedule; 1 when off).

  The original scales every soft threshold by a constant ``gk = 1`` (spec §2), and coupled decay
  pulls ``s`` towards 0, so the threshold ``gk·σ(s)`` never passes 0.5. A linear ramp lifts that
  ceiling, which the NCF-MLP's stage 1 needs: its surviving entries grow past 0.5 (docs/results/faithful_vs_fast.md, Faithful
  vs fast).
  """
  if gk_ramp_steps <= 0:
    return jnp.ones((), jnp.float32)
  return 1.0 + step.astype(jnp.float32) / float(gk_ramp_steps)


def make_optimizer(oc: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """``clip_by_global_norm → add_decayed_weights (coupled L2) → Adam`` (spec §4.3).

  The decay is added to the gradient *before* Adam's normalisation (``torch.optim.Adam(weight_decay)``
  semantics, not AdamW): with zero loss gradient the −100 thresholds still rise by ≈ lr per step
  (spec §2). ``grad_clip ≤ 0`` or ``weight_decay ≤ 0`` drop that part.

  ``threshold_weight_decay`` (stage 1 only; < 0 or absent: the same ``weight_decay``, as the
  original) gives the thresholds ``S_*`` their own coupled coefficient. Once the loss reaches a
  threshold, Adam normalises the decay term ``wd·s`` by the loss gradient's RMS, so the threshold
  rises only ≈ ``lr·wd·|s|/rms`` per step; a larger coefficient restores the rise (docs/results/faithful_vs_fast.md, Faithful
  vs fast).
  """
  parts = []
  if oc.grad_clip and oc.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(oc.grad_clip))
  wd = oc.weight_decay or 0.0
  wd_s = oc.get("threshold_weight_decay", -1.0)
  if wd_s is None or wd_s < 0 or wd_s == wd:  # one coupled decay on every parameter (the original)
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd))
  else:  # thresholds S_* get their own coefficient (the NCF-MLP's :fast preset)
    if wd > 0:
      parts.append(optax.add_decayed_weights(wd, mask=lambda p: _threshold_mask(p, False)))
    if wd_s > 0:
      parts.append(optax.add_decayed_weights(wd_s, mask=lambda p: _threshold_mask(p, True)))
  parts += [optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), optax.scale(-oc.lr)]
  return optax.chain(*parts)


def _threshold_mask(params, thresholds: bool):
  """True on the soft-threshold leaves (``embedding/S_*``: CERP's S_P, S_Q; PEP's S_E) when
  ``thresholds``, else on every other leaf."""

  def is_threshold(path, _):
    keys = [getattr(k, "key", None) for k in path]
    return "embedding" in keys and str(keys[-1]).startswith("S_")

  return jax.tree_util.tree_map_with_path(lambda p, x: is_threshold(p, x) == thresholds, params)


def build_model(config, data: data_lib.Interactions, mode: str) -> models.Recommender:
  embedding = emb_lib.make_embedding(config, data.num_entities, mode)
  backbone = models.make_backbone(config, num_nodes=data.num_entities,
                                  num_edges=2 * data.train.nnz)
  return models.Recommender(embedding=embedding, backbone=backbone, num_users=data.num_users)


_GRAPH_CACHE: dict = {}


def model_consts(config, data: data_lib.Interactions) -> dict:
  """Non-trainable, non-checkpointed variable collections: LightGCN's ``'graph'`` (Â from the
  training split only) as device arrays; ``{}`` for other backbones."""
  if config.model.backbone != "lightgcn":
    return {}
  key = (id(data.train), data.train.nnz)
  if key not in _GRAPH_CACHE:
    _GRAPH_CACHE.clear()
    adj = graph_lib.normalized_adjacency(data.train)
    _GRAPH_CACHE[key] = {k: jnp.asarray(v) for k, v in graph_lib.graph_arrays(adj).items()}
  return {"graph": {"backbone": _GRAPH_CACHE[key]}}


def init_variables(model: models.Recommender, seed: int, items_per_group: int) -> dict:
  """Initial variables; the same seed gives the same backbone weights in both stages (spec §5).

  The placeholder ``'graph'`` collection LightGCN creates at init is dropped (see model_consts)."""
  users = jnp.zeros((2,), jnp.int32)
  items = jnp.zeros((2, items_per_group), jnp.int32)
  variables = flax.core.unfreeze(model.init(jax.random.key(seed), users, items, train=False))
  variables.pop("graph", None)
  return variables


def _variables(params, batch_stats, masks, consts=None):
  v = {"params": params}
  if batch_stats:
    v["batch_stats"] = batch_stats
  if masks:
    v["masks"] = masks
  if consts:
    v.update(consts)
  return v


def first_occurrence(users: jax.Array) -> jax.Array:
  """``[G] bool``: True where a user id appears for the first time in the batch."""
  same = users[:, None] == users[None, :]
  return ~jnp.any(jnp.tril(same, k=-1), axis=1)


def train_step(state: TrainState, batch: dict, epoch: jax.Array, consts: dict, *,
               model: models.Recommender, tx: optax.GradientTransformation, sc: StepConfig):
  """One BPR step (spec §4.2): ``L = BPR + L2 + γ_e·(−Σ tanh²(η·E))``, then the optimizer update.

  In the prune stage the non-zeros of the effective tables *of this step's forward* (before the
  update) are counted and, if they fall to the next budget, captured (spec §5).

  Args:
    state: the train state.
    batch: ``users [G] int32``, ``items [G, 1+K] int32``, ``group_mask [G] bool``.
    epoch: scalar int32, for γ_e = γ_0·decay^epoch.
    consts: non-trainable collections (LightGCN's graph), from :func:`model_consts`.

  Returns:
    (new state, metrics dict of scalars).
  """
  users, items, gmask = batch["users"], batch["items"], batch["group_mask"]
  gamma = sc.gamma_init * sc.gamma_decay ** epoch.astype(jnp.float32)
  has_bs = bool(state.batch_stats)

  def loss_fn(params):
    variables = _variables(params, state.batch_stats, state.masks, consts)
    if sc.prune and sc.gk_ramp_steps > 0:
      variables[emb_lib.SCHEDULE] = {"embedding": {"gk": threshold_multiplier(state.step,
                                                                              sc.gk_ramp_steps)}}
    # Dropout's stream (MLP with mlp_dropout > 0): a key per step, so a resumed run draws the same.
    dropout_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    kwargs = dict(train=True, group_mask=gmask, rngs={"dropout": dropout_key})
    if has_bs:
      (scores, u, it, tables), upd = model.apply(variables, users, items, mutable=["batch_stats"],
                                                 **kwargs)
      new_bs = upd["batch_stats"]
    else:
      scores, u, it, tables = model.apply(variables, users, items, **kwargs)
      new_bs = state.batch_stats
    bpr = losses.bpr_loss(scores, gmask)
    l2 = losses.l2_penalty(u, it, gmask, sc.l2_penalty) if sc.l2_penalty > 0 else 0.0 * bpr
    if sc.prune:
      # LightGCN's path uses the batch's unique users, MF/MLP one user row per group (spec §3).
      umask = gmask & first_occurrence(users) if sc.unique_users else gmask
      rows, rmask = losses.regularizer_rows(u, it, gmask, umask)
      reg = losses.pruning_regularizer(rows, rmask, sc.eta)
    else:
      reg = 0.0 * bpr
    loss = bpr + l2 + gamma * reg
    return loss, (bpr, l2, reg, tables, new_bs)

  grads, (bpr, l2, reg, tables, new_bs) = jax.grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"bpr_loss": bpr, "l2_loss": l2, "reg_loss": reg, "loss": bpr + l2 + gamma * reg}
  prune_state = state.prune
  if sc.prune:
    nnz = emb_lib.count_nonzeros(tables)
    prune_state = pruning.capture(prune_state, tables, nnz, state.step)
    metrics["nonzeros"] = nnz
  new = state.replace(step=state.step + 1, params=params, batch_stats=new_bs, opt_state=opt_state,
                      prune=prune_state)
  return new, metrics


def make_block_fn(model, tx, sc: StepConfig, plan: Optional[shard_lib.ShardingPlan] = None):
  """Jitted ``(state, block, epoch, consts) -> (state, per-step metrics)`` scanning ``train_step``.

  A step runs only if its ``step_mask`` is set and (prune stage) not every budget is met yet; other
  steps leave the state untouched (``lax.cond``). The input state is donated. With a ``plan`` the
  block's groups stay split along the mesh's 'data' axis and the new state keeps the plan's
  shardings (so it feeds the next call without resharding or recompiling); GSPMD inserts the
  gradient all-reduce. Besides the per-step metrics ``[steps_per_block]``,
  ``metrics['params_finite']`` is a scalar bool: every parameter and batch statistic is finite
  after the block (one reduction per block, for :func:`check_finite`).
  """
  step = functools.partial(train_step, model=model, tx=tx, sc=sc)

  def body(state, batch, epoch, consts):
    active = batch["step_mask"]
    if sc.prune:
      active = active & ~state.prune.done

    def skip(state):
      zeros = jax.eval_shape(lambda s: step(s, batch, epoch, consts)[1], state)
      return state, jax.tree_util.tree_map(lambda z: jnp.zeros(z.shape, z.dtype), zeros)

    new, m = jax.lax.cond(active, lambda s: step(s, batch, epoch, consts), skip, state)
    m["active"] = active
    return new, m

  def block(state, blk, epoch, consts):
    if plan is not None:
      blk = plan.constrain_batch(blk)
    new, metrics = jax.lax.scan(lambda s, b: body(s, b, epoch, consts), state, blk)
    if plan is not None:
      new = plan.constrain(new)
    metrics["params_finite"] = _all_finite((new.params, new.batch_stats))
    return new, metrics

  return jax.jit(block, donate_argnums=(0,))


def _all_finite(tree) -> jax.Array:
  """Scalar bool: no NaN/Inf in any float leaf of ``tree``."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.ones((), bool)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


class MetricWriter:
  """Appends JSON lines to ``workdir/metrics.jsonl`` and the same scalars to TensorBoard.

  TensorBoard event files (tensorboardX, no TensorFlow) go to ``workdir/tensorboard/<run>``, one run
  per stage and target (``prune``, ``retrain_sparsity_0.5000``, ``test_…``), each numeric field a
  scalar at the record's ``step`` (else its ``epoch``); '@' becomes '_' in the tag
  (``valid/recall_20``), as TensorBoard's tag alphabet has no '@'. Process 0 only.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tb_dir = os.path.join(workdir, "tensorboard")
    self._tb = {}

  def write(self, record: dict):
    if not shard_lib.is_primary():
      return
    rec = {k: (float(v) if isinstance(v, (np.floating, jnp.ndarray)) else v)
           for k, v in record.items()}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(rec, sort_keys=True) + "\n")
    self._scalars(rec)

  def _scalars(self, rec: dict):
    step = rec.get("step", rec.get("epoch"))
    scalars = {k: v for k, v in rec.items() if k not in ("step", "epoch") and
               isinstance(v, (int, float)) and not isinstance(v, bool)}
    if step is None or not scalars:
      return
    run = "_".join(str(rec[k]) for k in ("stage", "target") if rec.get(k))
    if run not in self._tb:
      self._tb[run] = tensorboardX.SummaryWriter(os.path.join(self.tb_dir, run or "run"))
    for k, v in scalars.items():
      self._tb[run].add_scalar(k.replace("@", "_"), v, int(step))
    self._tb[run].flush()

  def close(self):
    for w in self._tb.values():
      w.close()
    self._tb = {}


def _to_host(tree):
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _json_dump(path: str, obj: Any):
  if not shard_lib.is_primary():  # multi-process: process 0 writes
    return
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
  os.replace(tmp, path)


def _json_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(type(o))


def target_tag(target: Optional[float]) -> str:
  """``sparsity_0.5000`` (the original's folder name) or ``full`` for an unpruned run."""
  return "full" if target is None else f"sparsity_{target:.4f}"


def make_score_fn(model: models.Recommender, num_users: int):
  """Pure scorer ``((variables, entity_vectors), users [B]) -> [B, I]`` for the evaluator."""

  def score_fn(args, users):
    variables, vecs = args
    return model.apply(variables, vecs[users], vecs[num_users:],
                       method=models.Recommender.score_users)

  return score_fn


def make_vectors_fn(model: models.Recommender):
  """Jitted ``variables -> [N, out_dim]`` composed entity vectors (once per evaluation)."""
  return jax.jit(lambda v: model.apply(v, method=models.Recommender.entity_vectors))


def _epoch_blocks(sampler, epoch, groups, steps_per_block):
  users, items = sampler.epoch(epoch)
  return sampler_lib.to_steps(users, items, groups, steps_per_block)


def _block(blocks, i):
  return {k: v[i] for k, v in blocks.items()}


def _accumulate(acc: dict, m: dict):
  act = np.asarray(m["active"])
  acc["steps"] = acc.get("steps", 0) + int(act.sum())
  for k, v in m.items():
    if k in ("active", "nonzeros", "params_finite"):
      continue
    acc[k] = acc.get(k, 0.0) + float(np.asarray(v)[act].sum())
  if "nonzeros" in m and act.any():
    acc["nonzeros"] = int(np.asarray(m["nonzeros"])[act][-1])


def _epoch_record(acc: dict) -> dict:
  n = max(acc.get("steps", 0), 1)
  rec = {f"train/{k}": acc[k] / n for k in ("bpr_loss", "reg_loss", "l2_loss", "loss") if k in acc}
  rec["train/steps"] = acc.get("steps", 0)
  return rec


class NonFiniteError(RuntimeError):
  """A training loss or parameter became NaN/Inf; nothing after the last good checkpoint saved."""


def _nonfinite(m: dict, before: int, state: TrainState) -> Optional[tuple]:
  """``(step, description)`` of a block's first non-finite loss, else of non-finite parameters
  after its last step; None when the block is finite."""
  act = np.asarray(m["active"])
  bad = np.nonzero(act & ~np.isfinite(np.asarray(m["loss"])))[0]
  if bad.size:
    parts = ", ".join(f"{k} {float(np.asarray(m[k])[bad[0]]):.4g}"
                      for k in ("bpr_loss", "l2_loss", "reg_loss") if k in m)
    step = before + int(act[:bad[0]].sum())
    return step, f"non-finite loss at step {step} ({parts})"
  if bool(m["params_finite"]):
    return None
  leaves = [n for n, a in ckpt_lib.host_leaves({"params": state.params,
                                                "batch_stats": state.batch_stats})
            if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all()]
  more = f" (and {len(leaves) - 1} more)" if len(leaves) > 1 else ""
  step = int(state.step) - 1
  return step, (f"non-finite parameter {leaves[0] if leaves else '?'}{more} after step {step} "
                f"(losses of steps {before}–{step} finite)")


def check_finite(m: dict, before: int, state: TrainState, where: str, store, writer) -> None:
  """Stops training at a block with a non-finite loss or parameter (checked once per block, on
  host, before anything of the block is recorded or saved).

  Args:
    m: the block's metrics on host (``loss``, ``active`` per step; ``params_finite`` scalar).
    before: ``state.step`` before the block (the number of its first active step).
    state: the state after the block (read only on failure, to name the non-finite leaves).
    where: ``'prune'`` or ``'retrain sparsity_0.5000'``, for the message.
    store: the stage's :class:`CheckpointStore` (names the last good checkpoint).
    writer: the :class:`MetricWriter`; a ``"event": "non_finite"`` record is written first.

  Raises:
    NonFiniteError: naming the step (the first active step whose loss is NaN/Inf, else the block's
      last step and the non-finite leaves) and the last good checkpoint.
  """
  found = _nonfinite(m, before, state)
  if found is None:
    return
  step, what = found
  good = (f"last good checkpoint {store.last_good} in {store.directory}" if store.last_good
          else f"no checkpoint saved yet in {store.directory}")
  writer.write({"stage": where.split()[0], "event": "non_finite", "step": step, "where": where,
                "what": what, "last_good_checkpoint": store.last_good})
  raise NonFiniteError(f"{where}: {what}; stopped, nothing saved after it ({good})")


def record_restore(store, writer, stage: str, **extra) -> None:
  """Writes a ``"event": "checkpoint_fallback"`` record to metrics.jsonl when ``store``'s last
  restore skipped damaged checkpoints (newest, restored, why each was skipped, and where they were
  moved: ``<checkpoints>.damaged/<n>``, so training continues after the good one)."""
  info = store.last_restore
  if info and info["fallback"]:
    moved = store.quarantine_skipped() if shard_lib.is_primary() else []
    writer.write({"stage": stage, **extra, "event": "checkpoint_fallback",
                  "directory": info["directory"], "newest": info["newest"],
                  "restored": info["checkpoint"], "skipped": info["skipped"], "moved_to": moved})


# --------------------------------------------------------------------------------------------------
# Stage 1: prune
# --------------------------------------------------------------------------------------------------


def prune_stage(config, data: data_lib.Interactions, workdir: str) -> dict:
  """Stage 1 (spec §5): train with soft thresholds + regularizer until every budget is met.

  Returns:
    the summary dict also written to ``prune/summary.json``.
  """
  pc = config.prune
  model = build_model(config, data, emb_lib.PRUNE)
  if not model.embedding.prunable:
    raise ValueError(f"embedding {config.model.embedding!r} has nothing to prune")
  num_entries = model.embedding.num_parameters()
  budgets = pruning.budgets(config.target_sparsities, num_entries)
  targets = sorted(config.target_sparsities)
  sampler = sampler_lib.BPRSampler(data.train, pc.num_negatives, config.sampling.mode,
                                   config.sampling.epoch, seed=config.seed)
  groups = pc.groups_per_step
  steps_per_epoch = -(-sampler.num_groups() // groups)
  tx = make_optimizer(pc)
  sc = StepConfig(eta=pc.eta, gamma_init=pc.gamma_init, gamma_decay=pc.gamma_decay,
                  l2_penalty=pc.l2_penalty, prune=True,
                  unique_users=config.model.backbone == "lightgcn",
                  gk_ramp_steps=int(pc.get("gk_ramp_steps", 0)))
  plan = shard_lib.ShardingPlan.from_config(config)
  block_fn = make_block_fn(model, tx, sc, plan)
  consts = plan.put(model_consts(config, data))

  variables = init_variables(model, config.seed, pc.num_negatives + 1)
  params = variables["params"]
  tables0 = model.apply(variables, method=models.Recommender.tables)
  initial = {k: jnp.copy(params["embedding"][k]) for k in model.embedding.prunable}
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     batch_stats=variables.get("batch_stats", {}), masks={},
                     opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(config.seed)),
                     prune=pruning.init_prune_state(budgets, tables0, initial))
  state = plan.put(state)  # restores below land on the current mesh, whatever wrote them
  store = ckpt_lib.CheckpointStore(os.path.join(workdir, "prune", "checkpoints"))
  meta = {"epoch": 0, "block": 0, "done": False, "acc": {}, "seconds": 0.0}
  if store.latest() is not None:
    state, meta, _ = store.restore(state)
    logging.info("prune: resumed from %s at step %d (epoch %d, block %d)", store.directory,
                 int(state.step), meta["epoch"], meta["block"])
  writer = MetricWriter(workdir)
  record_restore(store, writer, "prune")
  if int(state.step) > 0:  # records after this marker continue from the checkpoint
    writer.write({"stage": "prune", "event": "resumed", "step": int(state.step),
                  "epoch": meta["epoch"]})
  if config.model.embedding == "cerp":
    sizing = (f"b={config.model.bucket_size} d={config.model.dim}; threshold init "
              f"{emb_lib.resolved_threshold_init(config)} ({config.model.threshold_init_method})")
  else:
    sizing = (f"d={config.model.dim}; {config.model.pep_threshold_type} thresholds from "
              f"{config.model.pep_threshold_init}")
  logging.info("prune: %s (%s); tables %s, %d prunable entries; budgets %s for targets %s; %d "
               "steps/epoch of %d groups (sampling %s/%s)", type(model.embedding).__name__, sizing,
               {k: tuple(v.shape) for k, v in tables0.items()}, num_entries, budgets.tolist(),
               targets, steps_per_epoch, groups, config.sampling.mode, config.sampling.epoch)

  t_start = time.perf_counter() - meta["seconds"]
  last_save = int(state.step)
  # Progress: entries pruned toward the last (smallest) budget; stage 1 ends when it is met.
  nnz0 = int(meta["acc"].get("nonzeros", num_entries)) if meta.get("acc") else num_entries
  bar = progress_lib.Progress("prune", num_entries - int(budgets[-1]), num_entries - nnz0,
                              int(state.step), unit="entries", bar=config.progress_bar)
  epoch = meta["epoch"]
  while not meta["done"] and epoch < pc.max_epochs:
    blocks, _ = _epoch_blocks(sampler, epoch, groups, pc.steps_per_block)
    nblocks = blocks["users"].shape[0]
    acc = meta["acc"] if meta["block"] > 0 else {}
    for bi in range(meta["block"], nblocks):
      before = int(state.step)
      state, m = block_fn(state, plan.put_batch(_block(blocks, bi)), jnp.int32(epoch), consts)
      m = _to_host(m)
      check_finite(m, before, state, "prune", store, writer)
      _accumulate(acc, m)
      nnz = acc.get("nonzeros", num_entries)
      bar.update(num_entries - nnz, int(state.step), nonzeros=f"{nnz:,}",
                 sparsity=f"{1 - nnz / num_entries:.4f}")
      done = bool(state.prune.done)
      meta.update(epoch=epoch, block=bi + 1, acc=acc, done=done,
                  seconds=time.perf_counter() - t_start, step=int(state.step),
                  gamma=pc.gamma_init * pc.gamma_decay ** epoch,
                  budgets_reached=np.asarray(state.prune.reached).tolist())
      if done:
        break
      if int(state.step) - last_save >= config.checkpoint_every_steps:
        store.save(state, meta)
        last_save = int(state.step)
    nnz = acc.get("nonzeros", -1)
    rec = {"stage": "prune", "epoch": epoch, "step": int(state.step),
           "gamma": pc.gamma_init * pc.gamma_decay ** epoch, "prune/nonzeros": nnz,
           "prune/sparsity": 1 - nnz / num_entries, "prune/budgets_reached": int(
               np.sum(np.asarray(state.prune.reached))), **_epoch_record(acc),
           "train/steps_per_s": bar.steps_per_s()}
    writer.write(rec)
    logging.info("prune epoch %d step %d: bpr %.4f reg %.1f (γ=%.4g) nonzeros %d sparsity %.4f, "
                 "budgets reached %d/%d", epoch, int(state.step), rec.get("train/bpr_loss", 0),
                 rec.get("train/reg_loss", 0), rec["gamma"], nnz, rec["prune/sparsity"],
                 rec["prune/budgets_reached"], len(budgets))
    if not meta["done"]:
      epoch += 1
      meta.update(epoch=epoch, block=0, acc={})
    store.save(state, meta)
    last_save = int(state.step)
  bar.close()
  if not meta["done"]:
    meta["done"] = True  # max epochs: stop with the remaining targets unmet (spec §5)
    store.save(state, meta)
  ps = _to_host(state.prune)
  summary = {"num_entries": num_entries, "steps_per_epoch": steps_per_epoch,
             "final_step": int(state.step), "seconds": meta["seconds"], "targets": []}
  for i, s in enumerate(targets):
    summary["targets"].append({
        "target_sparsity": s, "budget": int(budgets[i]), "reached": bool(ps.reached[i]),
        "step": int(ps.step[i]) if ps.reached[i] else None,
        "epoch": int(ps.step[i]) // steps_per_epoch if ps.reached[i] else None,
        "nonzeros": int(ps.nonzeros[i]) if ps.reached[i] else None,
        "sparsity": 1 - int(ps.nonzeros[i]) / num_entries if ps.reached[i] else None})
    if ps.reached[i]:
      logging.info("prune: target %.4f (budget %d) met at step %d (epoch %d) with %d non-zeros", s,
                   budgets[i], ps.step[i], int(ps.step[i]) // steps_per_epoch, ps.nonzeros[i])
    else:
      logging.warning("prune: target %.4f (budget %d) NOT met within %d epochs", s, budgets[i],
                      pc.max_epochs)
  _json_dump(os.path.join(workdir, "prune", "summary.json"), summary)
  store.close()
  writer.close()
  return summary


def stage1_targets(config) -> list[float]:
  """The sorted target sparsities stage 1 ran with: this config's, or with ``config.prune_workdir``
  those of that workdir's config (a superset of this config's, :func:`_check_prune_workdir`)."""
  if config.get("prune_workdir"):
    with open(os.path.join(config.prune_workdir, "config.json"), encoding="utf-8") as f:
      return sorted(json.load(f)["target_sparsities"])
  return sorted(config.target_sparsities)


def load_prune_results(config, data, workdir):
  """(prune state on host, summary) from a finished stage 1.

  Raises:
    CheckpointError: stage 1 has not run or not finished in this workdir.
  """
  model = build_model(config, data, emb_lib.PRUNE)
  pc = config.prune
  tx = make_optimizer(pc)
  variables = init_variables(model, config.seed, pc.num_negatives + 1)
  params = variables["params"]
  budgets = pruning.budgets(stage1_targets(config), model.embedding.num_parameters())
  tables0 = model.apply(variables, method=models.Recommender.tables)
  like = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), masks={},
                    opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)),
                    prune=pruning.init_prune_state(budgets, tables0, {
                        k: params["embedding"][k] for k in model.embedding.prunable}))
  like = shard_lib.ShardingPlan.from_config(config).put(like)
  store = ckpt_lib.CheckpointStore(os.path.join(workdir, "prune", "checkpoints"))
  if store.latest() is None:
    raise ckpt_lib.CheckpointError(
        f"{store.directory}: no stage-1 checkpoint; run with --config.stage=prune (or all) first")
  state, meta, _ = store.restore(like)
  store.close()
  if not meta.get("done"):
    raise ckpt_lib.CheckpointError(f"{store.directory}: stage 1 has not finished (epoch "
                                   f"{meta.get('epoch')}); rerun stage prune to resume it")
  shard_lib.sync("prune summary written")  # process 0 wrote it
  with open(os.path.join(workdir, "prune", "summary.json"), encoding="utf-8") as f:
    summary = json.load(f)
  return _to_host(state.prune), summary


# --------------------------------------------------------------------------------------------------
# Stage 2: retrain (and the full-table reference)
# --------------------------------------------------------------------------------------------------


def _selection_improved(value, best):
  return best is None or value > best


def _eval_due(epoch: int, ec) -> bool:
  """Is a selection evaluation due in ``epoch``? 'end': after epochs every−1, 2·every−1, …;
  'start' / 'first_step': before / after the first step of epochs 0, every, 2·every, …"""
  if ec.timing == "end":
    return (epoch + 1) % ec.every_epochs == 0
  return epoch % ec.every_epochs == 0


def _horizon(meta: dict, epochs_done: int, config) -> int:
  """Epochs stage 2 runs if validation does not improve again: early stopping's horizon."""
  if meta["done"]:
    return epochs_done
  ec = config.eval
  return min(config.retrain.max_epochs,
             epochs_done + (ec.patience - meta["bad_evals"]) * ec.every_epochs)


def retrain_stage(config, data: data_lib.Interactions, workdir: str, target: Optional[float],
                  prune_state=None, prune_summary=None) -> dict:
  """Stage 2 for one budget (spec §5): mask = snapshot ≠ 0, tables = step-0 values ⊙ mask, no
  thresholds, no regularizer; periodic full-ranking evaluation, early stopping, test metrics of the
  selected checkpoint. With ``target=None`` trains the embedding as is (the full-table reference).

  Returns:
    the result dict also written to ``retrain/<tag>/result.json``.
  """
  rc, ec = config.retrain, config.eval
  tag = target_tag(target)
  out_dir = os.path.join(workdir, "retrain", tag)
  os.makedirs(out_dir, exist_ok=True)
  result_path = os.path.join(out_dir, "result.json")
  if os.path.exists(result_path):  # finished earlier: rerunning the command does not redo it
    with open(result_path, encoding="utf-8") as f:
      logging.info("retrain %s: already finished (%s), skipped", tag, result_path)
      return json.load(f)
  mode = emb_lib.RETRAIN if target is not None else emb_lib.DENSE
  model = build_model(config, data, mode)
  variables = init_variables(model, config.seed, rc.num_negatives + 1)
  params, masks = variables["params"], variables.get("masks", {})
  snapshot_info = {}
  if target is not None:
    i = [t["target_sparsity"] for t in prune_summary["targets"]].index(target)
    if not bool(prune_state.reached[i]):
      raise ValueError(f"target sparsity {target} was not reached in stage 1; nothing to retrain")
    snap = {k: prune_state.snapshots[k][i] for k in prune_state.snapshots}
    mask = pruning.masks_from_snapshot(snap)
    rewound = pruning.rewind(prune_state.initial, mask)
    params["embedding"] = {**params["embedding"], **{k: jnp.asarray(v) for k, v in rewound.items()}}
    masks = {"embedding": {k: jnp.asarray(v) for k, v in mask.items()}}
    snapshot_info = next(t for t in prune_summary["targets"] if t["target_sparsity"] == target)
  tx = make_optimizer(rc)
  sc = StepConfig(eta=0.0, gamma_init=0.0, gamma_decay=1.0, l2_penalty=rc.l2_penalty, prune=False)
  plan = shard_lib.ShardingPlan.from_config(config)
  block_fn = make_block_fn(model, tx, sc, plan)
  consts = plan.put(model_consts(config, data))
  batch_stats = variables.get("batch_stats", {})
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                     masks=masks, opt_state=tx.init(params),
                     rng=jax.random.key_data(jax.random.key(config.seed)), prune=None)
  state = plan.put(state)
  best_like = plan.put({"params": params, "batch_stats": batch_stats})
  sampler = sampler_lib.BPRSampler(data.train, rc.num_negatives, config.sampling.mode,
                                   config.sampling.epoch, seed=config.seed,
                                   triples_per_positive=config.sampling.triples_per_positive)
  groups = rc.groups_per_step
  steps_per_epoch = -(-sampler.num_groups() // groups)
  sel_split = ec.selection_split
  evaluator = evaluation.Evaluator(data, sel_split, ec.ks, ec.batch_size,
                                   user_sample=ec.user_sample, seed=ec.sample_seed, plan=plan)
  score_fn = make_score_fn(model, data.num_users)
  vectors_fn = make_vectors_fn(model)

  def run_eval(params_, bs_, ev, topk=False):
    v = _variables(params_, bs_, state.masks, consts)
    return ev.evaluate(score_fn, (v, vectors_fn(v)), return_topk=topk,
                       progress=config.progress_bar)

  store = ckpt_lib.CheckpointStore(os.path.join(out_dir, "checkpoints"))
  meta = {"epoch": 0, "block": 0, "done": False, "acc": {}, "seconds": 0.0, "history": [],
          "best_value": None, "best_epoch": None, "bad_evals": 0}
  best = None
  if store.latest() is not None:  # best: None in a checkpoint saved before the first evaluation
    state, meta, best = store.restore(state, best_like)
    logging.info("retrain %s: resumed at epoch %d block %d", tag, meta["epoch"], meta["block"])
  writer = MetricWriter(workdir)
  record_restore(store, writer, "retrain", target=tag)
  if store.latest() is not None:
    writer.write({"stage": "retrain", "target": tag, "event": "resumed", "step": int(state.step),
                  "epoch": meta["epoch"]})
  metric = ec.selection_metric
  logging.info("retrain %s: %d steps/epoch of %d groups × (1+%d) items; select on %s %s every %d "
               "epochs, patience %d, at most %d epochs", tag, steps_per_epoch, groups,
               rc.num_negatives, sel_split, metric, ec.every_epochs, ec.patience, rc.max_epochs)
  t_start = time.perf_counter() - meta["seconds"]
  last_save = int(state.step)
  epoch = meta["epoch"]
  bar = progress_lib.Progress(f"retrain {tag}", _horizon(meta, epoch, config) * steps_per_epoch,
                              int(state.step), int(state.step), bar=config.progress_bar)
  train_seconds = meta.get("train_seconds", 0.0)

  def evaluate_and_select(epoch_: int, rec: dict) -> None:
    """One selection evaluation: history, best copy, patience; sets meta['done'] when it stops."""
    nonlocal best
    res = run_eval(state.params, state.batch_stats, evaluator)
    value = res[metric]
    rec.update({f"{sel_split}/{k}": v for k, v in res.items()
                if "@" in k or k in ("num_users_evaluated", "sampled")})
    meta["history"].append({"epoch": epoch_, "step": int(state.step),
                            **{k: v for k, v in res.items() if "@" in k}})
    if _selection_improved(value, meta["best_value"]):
      meta.update(best_value=value, best_epoch=epoch_, bad_evals=0)
      # a copy: the state's buffers are donated to the next block.
      best = jax.tree_util.tree_map(jnp.copy, {"params": state.params,
                                               "batch_stats": state.batch_stats})
    else:
      meta["bad_evals"] += 1
    logging.info("retrain %s epoch %d (step %d): %s | best %s %.4f @ epoch %d", tag, epoch_,
                 int(state.step), evaluation.describe(res), metric, meta["best_value"],
                 meta["best_epoch"])
    last_due = ec.timing != "end" and epoch_ + ec.every_epochs >= rc.max_epochs
    if meta["bad_evals"] >= ec.patience or last_due:
      meta["done"] = True

  def run_block(block: dict, epoch_: int, acc: dict) -> None:
    nonlocal state
    before = int(state.step)
    state, m = block_fn(state, plan.put_batch(block), jnp.int32(epoch_), consts)
    m = _to_host(m)
    check_finite(m, before, state, f"retrain {tag}", store, writer)
    _accumulate(acc, m)

  while not meta["done"]:
    due = _eval_due(epoch, ec)
    rec = {"stage": "retrain", "target": tag, "epoch": epoch}
    if due and ec.timing == "start" and meta["block"] == 0:
      evaluate_and_select(epoch, rec)  # before the epoch's first step (the LightGCN code)
      if meta["done"]:
        rec["step"] = int(state.step)
        writer.write(rec)
        store.save(state, meta, best)
        break
    blocks, _ = _epoch_blocks(sampler, epoch, groups, rc.steps_per_block)
    acc = meta["acc"] if meta["block"] > 0 else {}
    t_epoch = time.perf_counter()
    for bi in range(meta["block"], blocks["users"].shape[0]):
      block = _block(blocks, bi)
      if bi == 0 and due and ec.timing == "first_step":  # after the first step (the NCF/MF code)
        run_block({k: v[:1] for k, v in block.items()}, epoch, acc)
        evaluate_and_select(epoch, rec)
        if meta["done"]:
          break
        block = {k: v[1:] for k, v in block.items()}
      run_block(block, epoch, acc)
      bar.update(int(state.step), int(state.step), epoch=epoch)
      meta.update(block=bi + 1, acc=acc, seconds=time.perf_counter() - t_start)
      if int(state.step) - last_save >= config.checkpoint_every_steps:
        meta["train_seconds"] = train_seconds + time.perf_counter() - t_epoch
        store.save(state, meta, best)
        last_save = int(state.step)
    train_seconds += time.perf_counter() - t_epoch
    rec.update({"step": int(state.step), **_epoch_record(acc)})
    last = epoch + 1 >= rc.max_epochs
    if not meta["done"] and ec.timing == "end" and (due or last):
      evaluate_and_select(epoch, rec)
      meta["done"] = meta["done"] or last
    elif not meta["done"] and last:
      meta["done"] = True  # the cap: no evaluation is due any more
    logging.info("retrain %s epoch %d: bpr %.4f l2 %.4g", tag, epoch, rec.get("train/bpr_loss", 0),
                 rec.get("train/l2_loss", 0))
    rec["train/steps_per_s"] = bar.steps_per_s()
    writer.write(rec)
    epoch += 1
    meta.update(epoch=epoch, block=0, acc={}, seconds=time.perf_counter() - t_start,
                train_seconds=train_seconds)
    bar.set_total(_horizon(meta, epoch, config) * steps_per_epoch)
    store.save(state, meta, best)
    last_save = int(state.step)
  bar.close()
  store.close()

  # Final test metrics from the selected checkpoint (or per-metric maxima, as the original).
  test_eval = evaluation.Evaluator(data, "test", ec.ks, ec.batch_size,
                                   user_sample=ec.test_user_sample, seed=ec.sample_seed, plan=plan)
  if sel_split == "test" and ec.test_user_sample == ec.user_sample:
    test_res = {k: v for k, v in meta["history"][[h["epoch"] for h in meta["history"]].index(
        meta["best_epoch"])].items()}
    test_res.update(split="test", num_users_evaluated=evaluator.users.size,
                    num_users_total=evaluator.num_users_total, sampled=evaluator.sampled)
  else:
    test_res = run_eval(best["params"], best["batch_stats"], test_eval)
  result = {
      "target": tag, "target_sparsity": target, "best_epoch": meta["best_epoch"],
      "selection": {"split": sel_split, "metric": metric, "value": meta["best_value"]},
      "epochs": epoch, "steps": int(state.step), "steps_per_epoch": steps_per_epoch,
      "train_seconds": meta.get("train_seconds", 0.0), "seconds": meta["seconds"],
      "snapshot": snapshot_info, "history": meta["history"],
      "test": {k: v for k, v in test_res.items() if k not in ("topk", "users")},
  }
  if ec.report == "per_metric_max":
    result["test_per_metric_max"] = {
        k: max(h[k] for h in meta["history"]) for k in meta["history"][0] if "@" in k}
  _json_dump(os.path.join(out_dir, "result.json"), result)
  writer.write({"stage": "test", "target": tag, "best_epoch": meta["best_epoch"],
                **{f"test/{k}": v for k, v in result["test"].items() if "@" in k}})
  writer.close()
  logging.info("retrain %s: test %s (best epoch %d)", tag, evaluation.describe(test_res),
               meta["best_epoch"])
  return result


def restore_best(config, data, workdir: str, target: Optional[float],
                 plan: Optional[shard_lib.ShardingPlan] = None):
  """(model, variables, meta) of the selected checkpoint of one retrain run, for eval.py.

  The variables are placed on ``plan``'s mesh (default: the config's), whatever device count wrote
  the checkpoint. The newest checkpoint that reads and verifies is used; ``meta['checkpoint']`` says
  which (:attr:`CheckpointStore.last_restore` plus ``finished``: that checkpoint's run had ended),
  so a caller can tell a fallback to an older checkpoint from the run's final one.

  Raises:
    CheckpointError: the run is missing or unfinished, no checkpoint verifies, or the restored one
      holds no selected parameters yet.
  """
  rc = config.retrain
  tag = target_tag(target)
  mode = emb_lib.RETRAIN if target is not None else emb_lib.DENSE
  model = build_model(config, data, mode)
  variables = init_variables(model, config.seed, rc.num_negatives + 1)
  params, masks = variables["params"], variables.get("masks", {})
  batch_stats = variables.get("batch_stats", {})
  tx = make_optimizer(rc)
  like = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    masks=masks, opt_state=tx.init(params),
                    rng=jax.random.key_data(jax.random.key(0)), prune=None)
  plan = plan or shard_lib.ShardingPlan.from_config(config)
  like = plan.put(like)
  store = ckpt_lib.CheckpointStore(os.path.join(workdir, "retrain", tag, "checkpoints"))
  if store.latest() is None:
    raise ckpt_lib.CheckpointError(f"{store.directory}: no checkpoint; run train.py first")
  state, meta, best = store.restore(like, plan.put({"params": params, "batch_stats": batch_stats}))
  store.close()
  info = store.last_restore
  if not meta.get("done") and not info["fallback"]:
    raise ckpt_lib.CheckpointError(f"{store.directory}: retraining of {tag} has not finished; "
                                   "rerun train.py to resume it")
  if best is None:
    raise ckpt_lib.CheckpointError(
        f"{store.directory}: checkpoint {info['checkpoint']} holds no selected parameters (saved "
        "before the first evaluation)" + (f"; {info['message']}" if info["fallback"] else ""))
  meta["checkpoint"] = {**info, "finished": bool(meta.get("done"))}
  return model, _variables(best["params"], best["batch_stats"], state.masks,
                           plan.put(model_consts(config, data))), meta


# --------------------------------------------------------------------------------------------------
# Entry
# --------------------------------------------------------------------------------------------------

_RESUME_IGNORED = ("stage", "progress_bar", "checkpoint_every_steps",
                   # where stage 1 lives; its stage-1 fields are checked by _check_prune_workdir
                   "prune_workdir",
                   # devices: a run resumes on any mesh / device count (sharding.py)
                   "mesh_shape", "mesh_axes", "shard_embedding_rows_min", "distributed",
                   "coordinator_address", "num_processes", "process_id",
                   # eval-time packing (post-training quantization): training does not read it
                   "pack")


def _flatten(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


# Fields added after workdirs were written: absent from an older config.json, they read as these
# defaults (which keep the older behaviour), so those runs still resume.
_ADDED_FIELD_DEFAULTS = {"prune.threshold_weight_decay": -1.0, "prune.gk_ramp_steps": 0}


def _config_diff(stored: dict, current: dict, selected) -> str:
  """``'a.b: old → new, …'`` over the flattened fields whose top-level group ``selected(group)``
  accepts; ``''`` when they all match."""
  a, b = _flatten(stored), _flatten(current)
  for k, v in _ADDED_FIELD_DEFAULTS.items():
    for flat in (a, b):
      flat.setdefault(k, v)
  diff = sorted(k for k in set(a) | set(b) if selected(k.split(".")[0]) and a.get(k) != b.get(k))
  return ", ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in diff[:8])


def _check_workdir_config(config, workdir):
  """Writes ``config.json`` in a new workdir; refuses an existing one written by another config,
  naming the differing fields (``retrain.max_epochs: 300 → 20``)."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
    shown = _config_diff(stored, current, lambda g: g not in _RESUME_IGNORED)
    if shown:
      raise ValueError(f"{workdir} holds a run with a different config ({shown}); use a new "
                       "--workdir or the same config")
  elif shard_lib.is_primary():
    _json_dump(path, current)


_CHOICES = {
    "model.backbone": ("mf", "mlp", "lightgcn"),
    "model.embedding": emb_lib.EMBEDDINGS,
    "model.combine": ("sum", "concat"),
    "model.threshold_type": ("element-wise", "global"),
    "model.threshold_init_method": ("all_ones", "uniform", "normal", "xavier_uniform", "power_law"),
    "model.full_init": ("normal", "xavier_uniform"),
    "sampling.mode": ("resample", "fixed"),
    "sampling.epoch": ("positives", "parity"),
    "data.format": ("lightgcn", "ml100k"),
    "data.loader": ("text", "tfds"),
    "eval.selection_split": ("valid", "test"),
    "eval.report": ("best", "per_metric_max"),
    "eval.timing": ("end", "start", "first_step"),
    "pack.value_dtype": tuple(packing.VALUE_DTYPES),
}
_POSITIVE = ("model.dim", "model.bucket_size", "prune.groups_per_step", "prune.num_negatives",
             "prune.steps_per_block", "prune.max_epochs", "retrain.groups_per_step",
             "retrain.num_negatives", "retrain.steps_per_block", "retrain.max_epochs",
             "eval.batch_size", "eval.every_epochs", "eval.patience", "checkpoint_every_steps",
             "sampling.triples_per_positive")


def validate_config(config, num_items: Optional[int] = None):
  """Checks every value a typo could break, before anything is written (unknown *fields* are
  refused by ml_collections itself).

  Raises:
    ValueError: naming the field, the value and what is expected.
  """
  flat = _flatten(json.loads(config.to_json_best_effort()))
  if config.stage not in ("prune", "retrain", "all"):
    raise ValueError(f"config.stage={config.stage!r}: expected 'prune', 'retrain' or 'all'")
  for key, choices in _CHOICES.items():
    if key in flat and flat[key] not in choices:
      raise ValueError(f"config.{key}={flat[key]!r}: expected one of {tuple(choices)}")
  for key in _POSITIVE:
    if key in flat and not (isinstance(flat[key], (int, float)) and flat[key] > 0):
      raise ValueError(f"config.{key}={flat[key]!r}: expected a positive number")
  for key, value in flat.items():
    if isinstance(value, float) and not np.isfinite(value):
      raise ValueError(f"config.{key}={value!r}: expected a finite number")
  for key in ("prune.lr", "retrain.lr"):
    if key in flat and not flat[key] > 0:
      raise ValueError(f"config.{key}={flat[key]!r}: expected a positive learning rate")
  ks = tuple(config.eval.ks)
  if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
    raise ValueError(f"config.eval.ks={ks!r}: expected positive integers")
  if num_items is not None and max(ks) > num_items:
    raise ValueError(f"config.eval.ks={ks!r}: K={max(ks)} exceeds the {num_items} items")
  name, _, k = config.eval.selection_metric.partition("@")
  if name not in evaluation.METRICS or not k.isdigit() or int(k) not in ks:
    raise ValueError(f"config.eval.selection_metric={config.eval.selection_metric!r}: expected "
                     f"<metric>@<K> with metric in {evaluation.METRICS} and K in "
                     f"config.eval.ks={ks}")
  ramp = config.prune.get("gk_ramp_steps", 0)
  if not isinstance(ramp, int) or ramp < 0:
    raise ValueError(f"config.prune.gk_ramp_steps={ramp!r}: expected an integer ≥ 0 (0 = off)")
  if not 0.0 <= config.data.valid_fraction < 1.0:
    raise ValueError(f"config.data.valid_fraction={config.data.valid_fraction!r}: expected [0, 1)")
  if config.eval.selection_split == "valid" and config.data.valid_fraction <= 0:
    raise ValueError("config.eval.selection_split='valid' needs config.data.valid_fraction > 0")
  if config.model.embedding == "cerp":
    pruning.budgets(config.target_sparsities, 2 * config.model.bucket_size * config.model.dim)
  shard_lib.ShardingPlan.from_config(config)  # mesh_shape / mesh_axes fit the devices


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the stages ``config.stage`` asks for ('prune' | 'retrain' | 'all') in ``workdir``.

  Resumes automatically from checkpoints there. Returns ``{tag: result}`` of the retrained runs.

  Raises:
    DataError, BucketSizeError, CheckpointError, ValueError: bad data, bucket size, checkpoints or
      config values (before anything is written for config errors).
  """
  validate_config(config)
  data = data_lib.load_interactions(config)
  validate_config(config, num_items=data.num_items)
  if config.model.embedding == "cerp":
    emb_lib.check_bucket_size(data.num_entities, config.model.bucket_size)
  for mode in ((emb_lib.PRUNE, emb_lib.RETRAIN) if emb_lib.prunes(config.model.embedding)
               else (emb_lib.DENSE,)):
    init_variables(build_model(config, data, mode), config.seed, 2)  # module-level checks
  prune_dir = config.get("prune_workdir") or workdir
  if config.get("prune_workdir"):
    _check_prune_workdir(config, prune_dir)
  if (config.stage == "retrain" and emb_lib.prunes(config.model.embedding)
      and not os.path.exists(os.path.join(prune_dir, "prune", "summary.json"))):
    raise ckpt_lib.CheckpointError(
        f"{os.path.join(prune_dir, 'prune')}: no finished stage 1; run with --config.stage=prune "
        "(or all) first")
  os.makedirs(workdir, exist_ok=True)
  with runlock.hold(workdir, shard_lib.is_primary()):
    return _run_stages(config, data, workdir, prune_dir)


def _run_stages(config, data: data_lib.Interactions, workdir: str, prune_dir: str) -> dict:
  """The stages of :func:`train_and_evaluate` in a checked, locked ``workdir``."""
  _check_workdir_config(config, workdir)
  logging.info("devices: %s; %s", jax.devices(),
               shard_lib.ShardingPlan.from_config(config).describe())
  results = {}
  if not emb_lib.prunes(config.model.embedding):  # full, QR, hashing: one dense training run
    if config.stage in ("retrain", "all"):
      results["full"] = retrain_stage(config, data, workdir, None)
    return results
  if config.stage in ("prune", "all"):
    prune_stage(config, data, workdir)
  if config.stage in ("retrain", "all"):
    ps, summary = load_prune_results(config, data, prune_dir)
    done_targets = [t["target_sparsity"] for t in summary["targets"]]
    for s in sorted(config.target_sparsities):
      if not bool(ps.reached[done_targets.index(s)]):
        logging.warning("retrain: skipping target %.4f (not reached in stage 1)", s)
        continue
      results[target_tag(s)] = retrain_stage(config, data, workdir, s, ps, summary)
      results[target_tag(s)]["stage1_seconds"] = summary.get("seconds")
    if not results:
      raise NoTargetReachedError(
          f"stage 1 reached none of the targets {sorted(config.target_sparsities)} within "
          f"prune.max_epochs={config.prune.max_epochs} (final sparsity in "
          f"{os.path.join(workdir, 'prune', 'summary.json')}); nothing to retrain: raise "
          "prune.max_epochs (in a new workdir) or lower the targets")
  return results


_STAGE1_FIELDS = ("data", "model", "prune", "sampling", "seed", "target_sparsities")


def stage1_diff(stored: dict, config) -> str:
  """The stage-1 fields (targets aside) in which ``config`` differs from a workdir's stored
  ``config.json`` dict, as ``'a.b: old → new, …'``; ``''`` when a stage 1 run with ``stored`` also
  serves ``config`` (for any subset of its targets)."""
  return _config_diff(stored, json.loads(config.to_json_best_effort()),
                      lambda g: g in _STAGE1_FIELDS and g != "target_sparsities")


def _check_prune_workdir(config, prune_dir: str):
  """``config.prune_workdir``: retrain from another workdir's finished stage 1 (one stage 1, several
  retraining protocols, or several budgets). Everything stage 1 depends on must match that
  workdir's config; this config's target sparsities must be a subset of its targets.

  Raises:
    ValueError: not with stage 'retrain', no config.json there, a stage-1 field differs, or a target
      stage 1 did not run for.
  """
  if config.stage != "retrain":
    raise ValueError(f"config.prune_workdir={prune_dir!r} needs --config.stage=retrain")
  path = os.path.join(prune_dir, "config.json")
  if not os.path.exists(path):
    raise ValueError(f"config.prune_workdir: {path} not found (not a train.py workdir)")
  with open(path, encoding="utf-8") as f:
    stored = json.load(f)
  shown = stage1_diff(stored, config)
  if shown:
    raise ValueError(f"config.prune_workdir={prune_dir!r} was pruned with other stage-1 settings "
                     f"({shown})")
  missing = sorted(set(config.target_sparsities) - set(stored["target_sparsities"]))
  if missing:
    raise ValueError(f"config.prune_workdir={prune_dir!r}: stage 1 ran for target sparsities "
                     f"{sorted(stored['target_sparsities'])}, not {missing}; retrain a subset of them")


class NoTargetReachedError(RuntimeError):
  """Stage 1 ended (max epochs) without reaching any target sparsity."""
