"""Training: stage 1 (prune, snapshot at budgets) and stage 2 (lottery-ticket retrain), resumable.

The hot path is one pure :func:`train_step`; ``jax.lax.scan`` fuses ``steps_per_block`` of them into
one compiled call with the state donated (:func:`make_block_fn`), so Python runs once per block.
Budget snapshots are taken inside the scanned step (exact per step). Both stages run in a
:class:`cerp_jax.loop.Loop`, which checkpoints with orbax into the workdir (layout:
:mod:`cerp_jax.workdir`) and resumes from it: the sampler's epoch sample depends only on
``(seed, epoch)``, so a resumed run continues with the same numbers. Stage 2's model selection is
:mod:`cerp_jax.selection`.
"""

from __future__ import annotations

import dataclasses
import functools
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

from cerp_jax import checkpoint as ckpt_lib
from cerp_jax import data as data_lib
from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import loop as loop_lib
from cerp_jax import losses
from cerp_jax import models
from cerp_jax import progress as progress_lib
from cerp_jax import pruning
from cerp_jax import runlock
from cerp_jax import sampler as sampler_lib
from cerp_jax import selection as selection_lib
from cerp_jax import sharding as shard_lib
from cerp_jax import workdir as workdir_lib

PRUNE, RETRAIN = "prune", "retrain"  # the stages

# --------------------------------------------------------------------------------------------------
# State, optimizer, step
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


def step_config(config: ml_collections.ConfigDict, stage: str) -> StepConfig:
  """The :class:`StepConfig` of ``stage`` ('prune' | 'retrain'): stage 1 from ``config.prune``;
  stage 2 without regularizer (η = γ = 0)."""
  if stage == RETRAIN:
    return StepConfig(eta=0.0, gamma_init=0.0, gamma_decay=1.0,
                      l2_penalty=config.retrain.l2_penalty, prune=False)
  pc = config.prune
  return StepConfig(eta=pc.eta, gamma_init=pc.gamma_init, gamma_decay=pc.gamma_decay,
                    l2_penalty=pc.l2_penalty, prune=True,
                    unique_users=config.model.backbone == "lightgcn",
                    gk_ramp_steps=int(pc.get("gk_ramp_steps", 0)))


def threshold_multiplier(step: jax.Array, gk_ramp_steps: int) -> jax.Array:
  """``gk = 1 + step / gk_ramp_steps`` float32 scalar (the NCF-MLP ``:fast`` preset's schedule);
  1 when ``gk_ramp_steps ≤ 0`` (the original's constant multiplier)."""
  if gk_ramp_steps <= 0:
    return jnp.ones((), jnp.float32)
  return 1.0 + step.astype(jnp.float32) / float(gk_ramp_steps)


def make_optimizer(oc: ml_collections.ConfigDict,
                   steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """``clip_by_global_norm → add_decayed_weights (coupled L2) → Adam`` of ``config.prune`` or
  ``config.retrain``, at the learning rate of :func:`learning_rate`.

  The decay is added to the gradient *before* Adam's normalisation (``torch.optim.Adam``'s
  ``weight_decay``, not AdamW), as in the original. ``grad_clip ≤ 0`` or ``weight_decay ≤ 0`` drop
  that part. ``threshold_weight_decay`` (stage 1 only; < 0 or absent: the same ``weight_decay``,
  as the original) gives the thresholds ``S_*`` their own coupled coefficient. ``steps_per_epoch``
  only shapes a schedule, never the optimizer's state.
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
  parts.append(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8))
  lr = learning_rate(oc, steps_per_epoch)
  parts.append(optax.scale(-lr) if isinstance(lr, float) else optax.scale_by_learning_rate(lr))
  return optax.chain(*parts)


def learning_rate(oc: ml_collections.ConfigDict, steps_per_epoch: int = 1):
  """The learning rate of ``oc`` (``config.prune`` / ``config.retrain``): the float ``lr`` when
  ``lr_schedule`` is 'constant' (or absent), else an optax schedule of the step.

  'cosine': a linear warm-up from 0 over ``lr_warmup_epochs`` epochs (when > 0), then a half cosine
  from ``lr`` down to ``lr · lr_final_fraction`` reached at epoch ``lr_decay_epochs`` (0:
  ``max_epochs``), held after; epochs of ``steps_per_epoch`` steps.
  """
  kind = oc.get("lr_schedule", "constant")
  if kind == "constant":
    return float(oc.lr)
  if kind != "cosine":
    raise ValueError(f"lr_schedule={kind!r}: expected 'constant' or 'cosine'")
  warmup = int(round(oc.get("lr_warmup_epochs", 0) * steps_per_epoch))
  decay = int(round((oc.get("lr_decay_epochs", 0) or oc.max_epochs) * steps_per_epoch))
  final = float(oc.lr) * oc.get("lr_final_fraction", 0.0)
  if warmup > 0:
    return optax.warmup_cosine_decay_schedule(0.0, float(oc.lr), warmup, max(decay, warmup + 1),
                                              end_value=final)
  return optax.cosine_decay_schedule(float(oc.lr), max(decay, 1), alpha=final / float(oc.lr))


def _threshold_mask(params, thresholds: bool):
  """True on the soft-threshold leaves (``embedding/S_*``: CERP's S_P, S_Q; PEP's S_E) when
  ``thresholds``, else on every other leaf."""

  def is_threshold(path, _):
    keys = [getattr(k, "key", None) for k in path]
    return "embedding" in keys and str(keys[-1]).startswith("S_")

  return jax.tree_util.tree_map_with_path(lambda p, x: is_threshold(p, x) == thresholds, params)


def first_occurrence(users: jax.Array) -> jax.Array:
  """``[G] bool``: True where a user id appears for the first time in the batch."""
  same = users[:, None] == users[None, :]
  return ~jnp.any(jnp.tril(same, k=-1), axis=1)


def train_step(state: TrainState, batch: dict, epoch: jax.Array, consts: dict, *,
               model: models.Recommender, tx: optax.GradientTransformation, sc: StepConfig):
  """One BPR step: ``L = BPR + L2 + γ_e·(−Σ tanh²(η·E))``, then the optimizer update.

  In the prune stage the non-zeros of the effective tables *of this step's forward* (before the
  update) are counted and, if they fall to the next budget, captured (:func:`pruning.capture`).

  Args:
    state: the train state.
    batch: ``users [G] int32``, ``items [G, 1+K] int32``, ``group_mask [G] bool``.
    epoch: scalar int32, for γ_e = γ_0·decay^epoch.
    consts: non-trainable collections (LightGCN's graph), from :func:`models.model_consts`.

  Returns:
    (new state, metrics dict of float32 scalars: ``bpr_loss``, ``l2_loss``, ``reg_loss``, ``loss``;
    in stage 1 also ``nonzeros`` int32).
  """
  users, items, gmask = batch["users"], batch["items"], batch["group_mask"]
  gamma = sc.gamma_init * sc.gamma_decay ** epoch.astype(jnp.float32)
  has_bs = bool(state.batch_stats)

  def loss_fn(params):
    variables = models.model_variables(params, state.batch_stats, state.masks, consts)
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
      # LightGCN's path uses the batch's unique users, MF/MLP one user row per group.
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
  after the block (one reduction per block, for the loop's finiteness check).
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


def create_train_state(config: ml_collections.ConfigDict, model: models.Recommender, stage: str,
                       variables: Optional[dict] = None, targets: Optional[tuple] = None,
                       tx: Optional[optax.GradientTransformation] = None) -> TrainState:
  """The step-0 train state of ``stage`` ('prune' | 'retrain'), on the default device.

  Args:
    config: the run's config: ``config.prune`` / ``config.retrain`` give the optimizer and the
      items per group, ``config.seed`` the initial variables and the dropout key.
    model: from :func:`models.create_model` (mode 'prune' for stage 1).
    stage: 'prune' | 'retrain'.
    variables: the initial variables (default: :func:`models.init_variables` of ``config.seed``);
      stage 2 passes its lottery ticket (rewound tables and their ``'masks'``).
    targets: stage 1's target sparsities (default: ``config.target_sparsities``), for the
      :class:`pruning.PruneState`'s budgets.
    tx: the optimizer whose state to initialise (default: :func:`make_optimizer` of the stage's
      config).

  Returns:
    ``step`` 0, the variables' params, batch statistics and masks, the optimizer's initial state,
    ``rng`` the key data of ``config.seed``; in stage 1 a PruneState shaped by the step-0 effective
    tables and holding copies of the raw prunable tables (for rewinding), else None.
  """
  sc = config.prune if stage == PRUNE else config.retrain
  if variables is None:
    variables = models.init_variables(model, config.seed, sc.num_negatives + 1)
  params = variables["params"]
  prune_state = None
  if stage == PRUNE:
    tables = model.apply(variables, method=models.Recommender.tables)
    initial = {k: jnp.copy(params["embedding"][k]) for k in model.embedding.prunable}
    budgets = pruning.budgets(config.target_sparsities if targets is None else targets,
                              model.embedding.num_parameters())
    prune_state = pruning.init_prune_state(budgets, tables, initial)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    masks=variables.get("masks", {}),
                    opt_state=(make_optimizer(sc) if tx is None else tx).init(params),
                    rng=jax.random.key_data(jax.random.key(config.seed)), prune=prune_state)


def _make_loop(config, data: data_lib.Interactions, model: models.Recommender, stage: str,
               workdir: str, directory: str, tags: dict) -> loop_lib.Loop:
  """The :class:`loop.Loop` of ``stage`` checkpointing in ``directory``: its sampler (stage 2 with
  ``sampling.triples_per_positive``), block function, sharding plan and LightGCN graph."""
  sc = config.prune if stage == PRUNE else config.retrain
  extra = {} if stage == PRUNE else {"triples_per_positive": config.sampling.triples_per_positive}
  sampler = sampler_lib.BPRSampler(data.train, sc.num_negatives, config.sampling.mode,
                                   config.sampling.epoch, seed=config.seed, **extra)
  plan = shard_lib.ShardingPlan.from_config(config)
  steps_per_epoch = -(-sampler.num_groups() // sc.groups_per_step)
  block_fn = make_block_fn(model, make_optimizer(sc, steps_per_epoch), step_config(config, stage),
                           plan)
  return loop_lib.Loop(config, sampler, sc.groups_per_step, sc.steps_per_block, block_fn, plan,
                       plan.put(models.model_consts(config, data)), directory,
                       workdir_lib.MetricWriter(workdir), tags)


# --------------------------------------------------------------------------------------------------
# Stage 1: prune
# --------------------------------------------------------------------------------------------------


def prune_stage(config, data: data_lib.Interactions, workdir: str) -> dict:
  """Stage 1: train with soft thresholds and the regularizer until every budget is met (or
  ``prune.max_epochs``), capturing each budget's snapshot at the first step within it.

  Returns:
    the summary dict also written to ``prune/summary.json``.

  Raises:
    ValueError: the embedding has nothing to prune.
    loop.NonFiniteError, CheckpointError: training diverged, or checkpoints exist but none restores.
  """
  model = models.create_model(config, data, emb_lib.PRUNE)
  if not model.embedding.prunable:
    raise ValueError(f"embedding {config.model.embedding!r} has nothing to prune")
  num_entries = model.embedding.num_parameters()
  budgets = pruning.budgets(config.target_sparsities, num_entries)
  loop = _make_loop(config, data, model, PRUNE, workdir,
                    os.path.join(workdir_lib.prune_dir(workdir), "checkpoints"), {"stage": "prune"})
  loop.start(create_train_state(config, model, PRUNE),
             {"epoch": 0, "block": 0, "done": False, "acc": {}, "seconds": 0.0})
  if loop.resumed:
    logging.info("prune: resumed from %s at step %d (epoch %d, block %d)", loop.store.directory,
                 int(loop.state.step), loop.meta["epoch"], loop.meta["block"])
  loop.record_resume(int(loop.state.step) > 0)
  if config.model.embedding == "cerp":
    sizing = (f"b={config.model.bucket_size} d={config.model.dim}; threshold init "
              f"{emb_lib.resolved_threshold_init(config)} ({config.model.threshold_init_method})")
  else:
    sizing = (f"d={config.model.dim}; {config.model.pep_threshold_type} thresholds from "
              f"{config.model.pep_threshold_init}")
  logging.info("prune: %s (%s); tables %s, %d prunable entries; budgets %s for targets %s; %d "
               "steps/epoch of %d groups (sampling %s/%s)", type(model.embedding).__name__, sizing,
               {k: tuple(v.shape[1:]) for k, v in loop.state.prune.snapshots.items()},
               num_entries, budgets.tolist(), sorted(config.target_sparsities),
               loop.steps_per_epoch, loop.groups, config.sampling.mode, config.sampling.epoch)
  # Progress: entries pruned toward the last (smallest) budget; stage 1 ends when it is met.
  meta = loop.meta
  nnz0 = int(meta["acc"].get("nonzeros", num_entries)) if meta.get("acc") else num_entries
  with progress_lib.Progress("prune", num_entries - int(budgets[-1]), num_entries - nnz0,
                             int(loop.state.step), unit="entries", bar=config.progress_bar) as bar:
    _prune_epochs(loop, bar, num_entries, len(budgets))
  if not meta["done"]:
    meta["done"] = True  # max epochs: stop with the remaining targets unmet
    loop.save()
  summary = _prune_summary(config, loop, num_entries, budgets)
  workdir_lib.write_json(workdir_lib.prune_summary_path(workdir), summary)
  loop.close()
  return summary


def _prune_epochs(loop: loop_lib.Loop, bar: progress_lib.Progress, num_entries: int,
                  num_budgets: int) -> None:
  """Stage 1's epochs until every budget is met or ``prune.max_epochs``; a record per epoch."""
  pc, meta = loop.config.prune, loop.meta
  epoch = meta["epoch"]
  while not meta["done"] and epoch < pc.max_epochs:
    gamma = pc.gamma_init * pc.gamma_decay ** epoch

    def after_block(acc, epoch=epoch, gamma=gamma):
      nnz = acc.get("nonzeros", num_entries)
      step, ps = int(loop.state.step), loop.state.prune
      bar.update(num_entries - nnz, step, nonzeros=f"{nnz:,}",
                 sparsity=f"{1 - nnz / num_entries:.4f}")
      meta.update(epoch=epoch, done=bool(ps.done), step=step, gamma=gamma,
                  budgets_reached=np.asarray(ps.reached).tolist())
      return meta["done"]

    acc = loop.run_epoch(epoch, after_block)
    nnz = acc.get("nonzeros", -1)
    rec = {"stage": "prune", "epoch": epoch, "step": int(loop.state.step), "gamma": gamma,
           "prune/nonzeros": nnz, "prune/sparsity": 1 - nnz / num_entries,
           "prune/budgets_reached": int(np.sum(np.asarray(loop.state.prune.reached))),
           **loop_lib.epoch_record(acc), "train/steps_per_s": bar.steps_per_s()}
    loop.writer.write(rec)
    logging.info("prune epoch %d step %d: bpr %.4f reg %.1f (γ=%.4g) nonzeros %d sparsity %.4f, "
                 "budgets reached %d/%d", epoch, int(loop.state.step),
                 rec.get("train/bpr_loss", 0), rec.get("train/reg_loss", 0), rec["gamma"], nnz,
                 rec["prune/sparsity"], rec["prune/budgets_reached"], num_budgets)
    if not meta["done"]:
      epoch += 1
      meta.update(epoch=epoch, block=0, acc={})
    loop.save()


def _prune_summary(config, loop: loop_lib.Loop, num_entries: int, budgets: np.ndarray) -> dict:
  """``prune/summary.json``: per target its budget and, if reached, the snapshot's step, epoch,
  non-zeros and sparsity (logged as well)."""
  ps = loop_lib.to_host(loop.state.prune)
  spe = loop.steps_per_epoch
  summary = {"num_entries": num_entries, "steps_per_epoch": spe,
             "final_step": int(loop.state.step), "seconds": loop.meta["seconds"], "targets": []}
  for i, s in enumerate(sorted(config.target_sparsities)):
    reached = bool(ps.reached[i])
    summary["targets"].append({
        "target_sparsity": s, "budget": int(budgets[i]), "reached": reached,
        "step": int(ps.step[i]) if reached else None,
        "epoch": int(ps.step[i]) // spe if reached else None,
        "nonzeros": int(ps.nonzeros[i]) if reached else None,
        "sparsity": 1 - int(ps.nonzeros[i]) / num_entries if reached else None})
    if reached:
      logging.info("prune: target %.4f (budget %d) met at step %d (epoch %d) with %d non-zeros", s,
                   budgets[i], ps.step[i], int(ps.step[i]) // spe, ps.nonzeros[i])
    else:
      logging.warning("prune: target %.4f (budget %d) NOT met within %d epochs", s, budgets[i],
                      config.prune.max_epochs)
  return summary


def load_prune_results(config, data: data_lib.Interactions, workdir: str):
  """``(prune state on host, summary)`` of a finished stage 1 in ``workdir``.

  Raises:
    CheckpointError: stage 1 has not run or not finished in this workdir.
  """
  model = models.create_model(config, data, emb_lib.PRUNE)
  like = create_train_state(config, model, PRUNE, targets=workdir_lib.stage1_targets(config))
  like = shard_lib.ShardingPlan.from_config(config).put(like)
  store = ckpt_lib.CheckpointStore(os.path.join(workdir_lib.prune_dir(workdir), "checkpoints"))
  if store.latest() is None:
    raise ckpt_lib.CheckpointError(
        f"{store.directory}: no stage-1 checkpoint; run with --config.stage=prune (or all) first")
  state, meta, _ = store.restore(like)
  store.close()
  if not meta.get("done"):
    raise ckpt_lib.CheckpointError(f"{store.directory}: stage 1 has not finished (epoch "
                                   f"{meta.get('epoch')}); rerun stage prune to resume it")
  shard_lib.sync("prune summary written")  # process 0 wrote it
  summary = workdir_lib.read_json(workdir_lib.prune_summary_path(workdir))
  return loop_lib.to_host(state.prune), summary


# --------------------------------------------------------------------------------------------------
# Stage 2: retrain (and the full-table reference)
# --------------------------------------------------------------------------------------------------


def _lottery_ticket(variables: dict, target: float, prune_state, prune_summary: dict,
                    ticket: str = "snapshot", seed: int = 0):
  """``(variables, snapshot summary)``: the step-0 tables under the mask of ``target``'s snapshot
  (mask = snapshot ≠ 0) in ``params``, the mask in ``'masks'``. ``ticket='random'`` is the control:
  the same number of non-zeros per table at positions drawn from ``seed``
  (:func:`pruning.random_masks`), the same step-0 values.

  Raises:
    ValueError: stage 1 did not reach ``target``.
  """
  i = [t["target_sparsity"] for t in prune_summary["targets"]].index(target)
  if not bool(prune_state.reached[i]):
    raise ValueError(f"target sparsity {target} was not reached in stage 1; nothing to retrain")
  mask = pruning.masks_from_snapshot({k: prune_state.snapshots[k][i]
                                      for k in prune_state.snapshots})
  if ticket == "random":
    mask = pruning.random_masks(mask, seed)
  rewound = pruning.rewind(prune_state.initial, mask)
  params = dict(variables["params"])
  params["embedding"] = {**params["embedding"], **{k: jnp.asarray(v) for k, v in rewound.items()}}
  masks = {"embedding": {k: jnp.asarray(v) for k, v in mask.items()}}
  info = {**next(t for t in prune_summary["targets"] if t["target_sparsity"] == target),
          "ticket": ticket}
  return {**variables, "params": params, "masks": masks}, info


def retrain_stage(config, data: data_lib.Interactions, workdir: str, target: Optional[float],
                  prune_state=None, prune_summary=None) -> dict:
  """Stage 2 for one budget: the lottery ticket of its snapshot (:func:`_lottery_ticket`) trained
  with the mask fixed (no thresholds, no regularizer); periodic full-ranking evaluation, early
  stopping, test metrics of the selected checkpoint. With ``target=None`` trains the embedding as
  is (the full table and the unpruned baselines). A finished run (its result.json) is not redone.

  Returns:
    the result dict also written to ``retrain/<tag>/result.json``.

  Raises:
    ValueError: stage 1 did not reach ``target``.
    loop.NonFiniteError, CheckpointError: training diverged, or checkpoints exist but none restores.
  """
  tag = workdir_lib.target_tag(target)
  out_dir = workdir_lib.retrain_dir(workdir, target)
  os.makedirs(out_dir, exist_ok=True)
  result_path = os.path.join(out_dir, "result.json")
  if os.path.exists(result_path):  # finished earlier: rerunning the command does not redo it
    logging.info("retrain %s: already finished (%s), skipped", tag, result_path)
    return workdir_lib.read_json(result_path)
  model = models.create_model(config, data, emb_lib.RETRAIN if target is not None
                              else emb_lib.DENSE)
  variables = models.init_variables(model, config.seed, config.retrain.num_negatives + 1)
  snapshot_info = {}
  if target is not None:
    variables, snapshot_info = _lottery_ticket(variables, target, prune_state, prune_summary,
                                               config.retrain.ticket, config.seed)
  state = create_train_state(config, model, RETRAIN, variables)
  loop = _make_loop(config, data, model, RETRAIN, workdir, os.path.join(out_dir, "checkpoints"),
                    {"stage": "retrain", "target": tag})
  selection = selection_lib.Selection(config, data, model, loop, tag)
  loop.start(state, {"epoch": 0, "block": 0, "done": False, "acc": {}, "seconds": 0.0,
                     "history": [], "best_value": None, "best_epoch": None, "bad_evals": 0},
             best_like={"params": state.params, "batch_stats": state.batch_stats})
  if loop.resumed:
    logging.info("retrain %s: resumed at epoch %d block %d", tag, loop.meta["epoch"],
                 loop.meta["block"])
  loop.record_resume(loop.resumed)
  rc, ec = config.retrain, config.eval
  logging.info("retrain %s: %d steps/epoch of %d groups × (1+%d) items; select on %s %s every %d "
               "epochs, patience %d, at most %d epochs", tag, loop.steps_per_epoch, loop.groups,
               rc.num_negatives, ec.selection_split, ec.selection_metric, ec.every_epochs,
               ec.patience, rc.max_epochs)
  step = int(loop.state.step)
  total = selection_lib.horizon(loop.meta, loop.meta["epoch"], config) * loop.steps_per_epoch
  with progress_lib.Progress(f"retrain {tag}", total, step, step,
                             bar=config.progress_bar) as bar:
    _retrain_epochs(loop, selection, bar)
  result = selection.result(target, snapshot_info)
  workdir_lib.write_json(result_path, result)
  loop.writer.write({"stage": "test", "target": tag, "best_epoch": result["best_epoch"],
                     **{f"test/{k}": v for k, v in result["test"].items() if "@" in k}})
  loop.close()
  logging.info("retrain %s: test %s (best epoch %d)", tag, evaluation.describe(result["test"]),
               result["best_epoch"])
  return result


def _retrain_epochs(loop: loop_lib.Loop, selection: selection_lib.Selection,
                    bar: progress_lib.Progress) -> None:
  """Stage 2's epochs until early stopping or ``retrain.max_epochs``, evaluating for selection at
  ``eval.timing`` ('end' of, 'start' of, or after the 'first_step' of the epochs due)."""
  config, meta = loop.config, loop.meta
  ec, max_epochs = config.eval, config.retrain.max_epochs
  epoch, train_seconds = meta["epoch"], meta.get("train_seconds", 0.0)
  while not meta["done"]:
    due = selection_lib.eval_due(epoch, ec)
    rec = {"stage": "retrain", "target": selection.tag, "epoch": epoch}
    if due and ec.timing == "start" and meta["block"] == 0:
      if selection.select(epoch, rec):  # before the epoch's first step (the LightGCN code)
        rec["step"] = int(loop.state.step)
        loop.writer.write(rec)
        loop.save()
        break

    def after_block(acc, epoch=epoch):
      del acc
      step = int(loop.state.step)
      bar.update(step, step, epoch=epoch)
      meta["train_seconds"] = train_seconds + time.perf_counter() - loop.epoch_t0
      return False

    first_step = None
    if due and ec.timing == "first_step":  # after the first step (the NCF/MF code)
      first_step = functools.partial(selection.select, epoch, rec)
    acc = loop.run_epoch(epoch, after_block, first_step)
    train_seconds += time.perf_counter() - loop.epoch_t0
    rec.update({"step": int(loop.state.step), **loop_lib.epoch_record(acc)})
    last = epoch + 1 >= max_epochs
    if not meta["done"] and ec.timing == "end" and (due or last):
      selection.select(epoch, rec)
      meta["done"] = meta["done"] or last
    elif not meta["done"] and last:
      meta["done"] = True  # the cap: no evaluation is due any more
    logging.info("retrain %s epoch %d: bpr %.4f l2 %.4g", selection.tag, epoch,
                 rec.get("train/bpr_loss", 0), rec.get("train/l2_loss", 0))
    rec["train/steps_per_s"] = bar.steps_per_s()
    loop.writer.write(rec)
    epoch += 1
    meta.update(epoch=epoch, block=0, acc={}, seconds=loop.seconds(), train_seconds=train_seconds)
    bar.set_total(selection_lib.horizon(meta, epoch, config) * loop.steps_per_epoch)
    loop.save()


# --------------------------------------------------------------------------------------------------
# Entry
# --------------------------------------------------------------------------------------------------


class NoTargetReachedError(RuntimeError):
  """Stage 1 ended (max epochs) without reaching any target sparsity."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the stages ``config.stage`` asks for ('prune' | 'retrain' | 'all') in ``workdir``.

  Resumes automatically from checkpoints there. Returns ``{tag: result}`` of the retrained runs.

  Raises:
    DataError, BucketSizeError, CheckpointError, ValueError: bad data, bucket size, checkpoints or
      config values (before anything is written for config errors).
    NoTargetReachedError: stage 1 reached none of the targets.
    WorkdirBusyError: another train.py or eval.py holds the workdir.
  """
  workdir_lib.validate_config(config)
  data = data_lib.load_interactions(config)
  workdir_lib.validate_config(config, num_items=data.num_items)
  if config.model.embedding == "cerp":
    emb_lib.check_bucket_size(data.num_entities, config.model.bucket_size)
  for mode in ((emb_lib.PRUNE, emb_lib.RETRAIN) if emb_lib.prunes(config.model.embedding)
               else (emb_lib.DENSE,)):
    models.init_variables(models.create_model(config, data, mode), config.seed, 2)  # its checks
  prune_workdir = config.get("prune_workdir") or workdir
  if config.get("prune_workdir"):
    workdir_lib.check_prune_workdir(config, prune_workdir)
  if (config.stage == "retrain" and emb_lib.prunes(config.model.embedding)
      and not os.path.exists(workdir_lib.prune_summary_path(prune_workdir))):
    raise ckpt_lib.CheckpointError(
        f"{workdir_lib.prune_dir(prune_workdir)}: no finished stage 1; run with "
        "--config.stage=prune (or all) first")
  os.makedirs(workdir, exist_ok=True)
  with runlock.hold(workdir, shard_lib.is_primary()):
    return _run_stages(config, data, workdir, prune_workdir)


def _run_stages(config, data: data_lib.Interactions, workdir: str, prune_workdir: str) -> dict:
  """The stages of :func:`train_and_evaluate` in a checked, locked ``workdir``."""
  workdir_lib.check_config(config, workdir)
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
    ps, summary = load_prune_results(config, data, prune_workdir)
    done_targets = [t["target_sparsity"] for t in summary["targets"]]
    for s in sorted(config.target_sparsities):
      tag = workdir_lib.target_tag(s)
      if not bool(ps.reached[done_targets.index(s)]):
        logging.warning("retrain: skipping target %.4f (not reached in stage 1)", s)
        continue
      results[tag] = retrain_stage(config, data, workdir, s, ps, summary)
      results[tag]["stage1_seconds"] = summary.get("seconds")
    if not results:
      raise NoTargetReachedError(
          f"stage 1 reached none of the targets {sorted(config.target_sparsities)} within "
          f"prune.max_epochs={config.prune.max_epochs} (final sparsity in "
          f"{workdir_lib.prune_summary_path(workdir)}); nothing to retrain: raise "
          "prune.max_epochs (in a new workdir) or lower the targets")
  return results
