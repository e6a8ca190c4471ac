"""Pruning schedule shared by every pruned embedding: budgets, per-step snapshots, masks, rewinding.

Source: spec §5 (``CERP/prune.py``, ``engine.py``). Written once for CERP (tables P, Q) and any other
embedding that exposes ``tables()`` and ``prunable`` names (PEP later).
"""

from __future__ import annotations

from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np


def budgets(target_sparsities: Sequence[float], num_entries: int) -> np.ndarray:
  """Non-zero budgets ``int((1 − s)·num_entries)`` for targets sorted ascending (spec §5).

  For CERP ``num_entries = 2·b·d`` (sparsity is relative to the meta tables). ``s = 0.8, b = 1000,
  d = 128`` gives 51,199 (float rounding of the original's formula, kept on purpose).

  Raises:
    ValueError: a target outside (0, 1) or repeated targets.
  """
  ts = sorted(float(s) for s in target_sparsities)
  if not ts:
    raise ValueError("target_sparsities is empty")
  for s in ts:
    if not 0.0 < s < 1.0:
      raise ValueError(f"target sparsity {s} outside (0, 1)")
  if len(set(ts)) != len(ts):
    raise ValueError(f"repeated target sparsities: {ts}")
  return np.array([int((1 - s) * num_entries) for s in ts], dtype=np.int64)


@flax.struct.dataclass
class PruneState:
  """On-device snapshot bookkeeping (spec §5).

  Attributes:
    budgets: ``[T] int32``, descending (ascending sparsity).
    reached: ``[T] bool``.
    step: ``[T] int32`` the step whose pre-update tables were captured (−1 if not reached).
    nonzeros: ``[T] int32`` the non-zero count at that step.
    snapshots: dict name → ``[T, ...]`` float32 captured effective tables.
    initial: dict name → the step-0 raw tables (for rewinding).
  """

  budgets: jax.Array
  reached: jax.Array
  step: jax.Array
  nonzeros: jax.Array
  snapshots: dict
  initial: dict

  @property
  def done(self) -> jax.Array:
    return jnp.all(self.reached)


def init_prune_state(budgets_: np.ndarray, tables: dict, initial: dict) -> PruneState:
  t = len(budgets_)
  return PruneState(
      budgets=jnp.asarray(budgets_, jnp.int32), reached=jnp.zeros(t, bool),
      step=jnp.full(t, -1, jnp.int32), nonzeros=jnp.full(t, -1, jnp.int32),
      snapshots={k: jnp.zeros((t,) + v.shape, v.dtype) for k, v in tables.items()},
      initial=dict(initial))


def capture(ps: PruneState, tables: dict, nonzeros: jax.Array, step: jax.Array) -> PruneState:
  """Saves ``tables`` for the next unmet budget if ``nonzeros ≤`` it (spec §5: at most one per step).

  Runs inside the jitted, scanned step, so snapshots are exact per step even when steps are fused.
  The copy into the snapshot buffer happens under ``lax.cond`` only on the step that triggers.
  """
  idx = jnp.argmin(ps.reached)  # first unmet (largest remaining budget)
  trigger = (~ps.reached[idx]) & (nonzeros <= ps.budgets[idx])

  def save(ps):
    snaps = {k: ps.snapshots[k].at[idx].set(tables[k]) for k in ps.snapshots}
    return ps.replace(reached=ps.reached.at[idx].set(True), step=ps.step.at[idx].set(step),
                      nonzeros=ps.nonzeros.at[idx].set(nonzeros), snapshots=snaps)

  return jax.lax.cond(trigger, save, lambda ps: ps, ps)


def masks_from_snapshot(snapshot: dict) -> dict:
  """``mask = 1[snapshot ≠ 0]`` per table, float32 (spec §5, retraining)."""
  return {k: (np.asarray(v) != 0).astype(np.float32) for k, v in snapshot.items()}


def rewind(initial: dict, masks: dict) -> dict:
  """Lottery-ticket rewinding: ``initial ⊙ mask`` per table (spec §5)."""
  return {k: np.asarray(initial[k]) * masks[k] for k in masks}
