"""The resumable training loop both stages run (:mod:`cerp_jax.train` drives it).

A :class:`Loop` runs epochs of BPR samples as blocks of fused, donated steps (the block function of
:func:`cerp_jax.train.make_block_fn`) and owns what stage 1 and stage 2 share: restore-or-start from
the checkpoint directory, ``meta`` (the position and the partial epoch's sums, so a resumed run
continues mid-epoch with the same numbers), the per-block finiteness check, the checkpoint cadence
(``config.checkpoint_every_steps``) and the records in metrics.jsonl.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from cerp_jax import checkpoint as ckpt_lib
from cerp_jax import sampler as sampler_lib
from cerp_jax import sharding as shard_lib
from cerp_jax import workdir as workdir_lib


class NonFiniteError(RuntimeError):
  """A training loss or parameter became NaN/Inf; nothing after the last good checkpoint saved."""


def to_host(tree):
  """numpy copy of a pytree of device arrays (``jax.device_get``)."""
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def epoch_record(acc: dict) -> dict:
  """``train/<loss>``: means per active step of an epoch's sums ``acc``; ``train/steps``."""
  n = max(acc.get("steps", 0), 1)
  rec = {f"train/{k}": acc[k] / n for k in ("bpr_loss", "reg_loss", "l2_loss", "loss") if k in acc}
  rec["train/steps"] = acc.get("steps", 0)
  return rec


def _accumulate(acc: dict, m: dict):
  """Adds a block's active steps (``steps``) and loss sums to ``acc``; keeps its last
  ``nonzeros``."""
  act = np.asarray(m["active"])
  acc["steps"] = acc.get("steps", 0) + int(act.sum())
  for k, v in m.items():
    if k in ("active", "nonzeros", "params_finite"):
      continue
    acc[k] = acc.get(k, 0.0) + float(np.asarray(v)[act].sum())
  if "nonzeros" in m and act.any():
    acc["nonzeros"] = int(np.asarray(m["nonzeros"])[act][-1])


def _nonfinite(m: dict, before: int, state) -> Optional[tuple]:
  """``(step, description)`` of a block's first non-finite loss, else of non-finite parameters
  after its last step; None when the block is finite.

  Args:
    m: the block's metrics on host (``loss``, ``active`` per step; ``params_finite`` scalar).
    before: ``state.step`` before the block (the number of its first active step).
    state: the train state after the block (read only on failure, to name the non-finite leaves).
  """
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


class Loop:
  """One stage's training loop over its checkpoint directory.

  Attributes:
    state: the train state (on the plan's mesh); its buffers are donated to each block.
    meta: JSON-serialisable position: ``epoch``, ``block`` (blocks of ``epoch`` done), ``acc``
      (that epoch's sums so far), ``done``, ``seconds`` (wall seconds of the stage, earlier runs
      included); each stage adds its own keys. Saved with every checkpoint.
    best: stage 2's selected ``{'params', 'batch_stats'}`` (saved with the checkpoints), or None.
    resumed: :meth:`start` restored a checkpoint.

  Args:
    config: the run's config (``checkpoint_every_steps``).
    sampler: the stage's :class:`cerp_jax.sampler.BPRSampler`.
    groups_per_step, steps_per_block: the stage's step size and block length.
    block_fn: jitted ``(state, block, epoch, consts) -> (state, per-step metrics)``, the input state
      donated.
    plan: the :class:`cerp_jax.sharding.ShardingPlan` the state and the blocks are placed with.
    consts: non-trainable collections (LightGCN's graph), on the plan's mesh.
    directory: the checkpoint directory.
    writer: the workdir's :class:`cerp_jax.workdir.MetricWriter`.
    tags: the keys naming the run in records: ``{'stage': 'prune'}`` or ``{'stage': 'retrain',
      'target': 'sparsity_0.5000'}``.
  """

  def __init__(self, config, sampler: sampler_lib.BPRSampler, groups_per_step: int,
               steps_per_block: int, block_fn: Callable, plan: shard_lib.ShardingPlan, consts: dict,
               directory: str, writer: workdir_lib.MetricWriter, tags: dict):
    self.config, self.sampler, self.block_fn, self.plan, self.consts = (config, sampler, block_fn,
                                                                        plan, consts)
    self.groups, self.steps_per_block = groups_per_step, steps_per_block
    self.steps_per_epoch = -(-sampler.num_groups() // groups_per_step)
    self.store = ckpt_lib.CheckpointStore(directory)
    self.writer, self.tags = writer, tags
    self.where = " ".join(str(v) for v in tags.values())  # 'prune' | 'retrain sparsity_0.5000'
    self.state, self.meta, self.best = None, {}, None
    self.resumed, self.last_save, self.epoch_t0, self._t_start = False, 0, 0.0, 0.0

  def start(self, state, meta: dict, best_like: Any = None) -> None:
    """Places ``state`` on the plan's mesh, then restores the newest checkpoint that verifies, if
    any (``resumed``: state, meta and, with ``best_like``, best); else starts from ``state`` and
    ``meta``.

    Raises:
      CheckpointError: checkpoints exist but none restores.
    """
    self.state, self.meta = self.plan.put(state), meta
    best_like = None if best_like is None else self.plan.put(best_like)
    self.resumed = self.store.latest() is not None
    if self.resumed:  # best: None in a checkpoint saved before the first evaluation
      self.state, self.meta, self.best = self.store.restore(self.state, best_like)
    self.last_save = int(self.state.step)
    self._t_start = time.perf_counter() - self.meta["seconds"]

  def record_resume(self, resumed: bool) -> None:
    """Records the restore in metrics.jsonl: skipped damaged checkpoints (``checkpoint_fallback``:
    newest, restored, why each was skipped, and where they were moved,
    ``<checkpoints>.damaged/<n>``, so training continues after the good one), and with ``resumed``
    a ``resumed`` marker (the records after it continue from the checkpoint)."""
    info = self.store.last_restore
    if info and info["fallback"]:
      moved = self.store.quarantine_skipped() if shard_lib.is_primary() else []
      self.writer.write({**self.tags, "event": "checkpoint_fallback",
                         "directory": info["directory"], "newest": info["newest"],
                         "restored": info["checkpoint"], "skipped": info["skipped"],
                         "moved_to": moved})
    if resumed:
      self.writer.write({**self.tags, "event": "resumed", "step": int(self.state.step),
                         "epoch": self.meta["epoch"]})

  def seconds(self) -> float:
    """Wall seconds of the stage so far, earlier runs of it included."""
    return time.perf_counter() - self._t_start

  def run_epoch(self, epoch: int, after_block: Callable[[dict], bool],
                first_step: Optional[Callable[[], bool]] = None) -> dict:
    """Runs ``epoch``'s blocks from ``meta['block']`` on; returns the epoch's sums ``acc``.

    After each block ``meta`` gets the position, then ``after_block(acc)`` runs (progress, the
    stage's keys): True ends the epoch, else a checkpoint is saved when due. With ``first_step``, a
    fresh epoch's first step runs alone, then ``first_step()``: True ends the epoch there.
    ``epoch_t0`` is when the epoch's steps began (after its sampling).

    Raises:
      NonFiniteError: a block's loss or parameters are not finite.
    """
    blocks, _ = sampler_lib.to_steps(*self.sampler.epoch(epoch), self.groups,
                                     self.steps_per_block)
    acc = self.meta["acc"] if self.meta["block"] > 0 else {}
    self.epoch_t0 = time.perf_counter()
    for bi in range(self.meta["block"], blocks["users"].shape[0]):
      block = {k: v[bi] for k, v in blocks.items()}
      if bi == 0 and first_step is not None:
        self.run_block({k: v[:1] for k, v in block.items()}, epoch, acc)
        if first_step():
          break
        block = {k: v[1:] for k, v in block.items()}
      self.run_block(block, epoch, acc)
      self.meta.update(block=bi + 1, acc=acc, seconds=self.seconds())
      if after_block(acc):
        break
      if int(self.state.step) - self.last_save >= self.config.checkpoint_every_steps:
        self.save()
    return acc

  def run_block(self, block: dict, epoch: int, acc: dict) -> None:
    """Runs one block of steps (numpy ``users [s, G]``, ``items [s, G, 1+K]``, ``group_mask``,
    ``step_mask``), checks it is finite, and adds it to ``acc``."""
    before = int(self.state.step)
    self.state, m = self.block_fn(self.state, self.plan.put_batch(block), jnp.int32(epoch),
                                  self.consts)
    m = to_host(m)
    self._check_finite(m, before)
    _accumulate(acc, m)

  def save(self) -> None:
    """Saves the state, ``meta`` and ``best`` as the next checkpoint."""
    self.store.save(self.state, self.meta, self.best)
    self.last_save = int(self.state.step)

  def close(self) -> None:
    self.store.close()
    self.writer.close()

  def _check_finite(self, m: dict, before: int) -> None:
    """Stops training at a block with a non-finite loss or parameter (checked once per block, on
    host, before anything of the block is recorded or saved); a ``non_finite`` record first.

    Raises:
      NonFiniteError: naming the step (the first active step whose loss is NaN/Inf, else the
        block's last step and the non-finite leaves) and the last good checkpoint.
    """
    found = _nonfinite(m, before, self.state)
    if found is None:
      return
    step, what = found
    store = self.store
    good = (f"last good checkpoint {store.last_good} in {store.directory}" if store.last_good
            else f"no checkpoint saved yet in {store.directory}")
    self.writer.write({"stage": self.tags["stage"], "event": "non_finite", "step": step,
                       "where": self.where, "what": what,
                       "last_good_checkpoint": store.last_good})
    raise NonFiniteError(f"{self.where}: {what}; stopped, nothing saved after it ({good})")
