"""Pruning schedule of every pruned embedding (CERP, PEP): budgets, per-step snapshots, masks,
rewinding, as the authors' code does (docs/algorithm.md, Stage 1 and Stage 2)."""

from __future__ import annotations

from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np


def budgets(target_sparsities: Sequence[float], num_entries: int) -> np.ndarray:
  """``[T] int64`` budgets ``int((1 − s)·num_entries)``, targets ascending (CERP: 2·b·d entries).

  Raises:
    ValueError: no target, a target outside (0, 1), or repeated targets.
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
  """On-device snapshot bookkeeping: ``budgets [T] int32`` (descending), ``reached [T] bool``,
  ``step``/``nonzeros [T] int32`` of each capture (−1 until reached), ``snapshots`` name →
  ``[T, ...]`` float32 effective tables, ``initial`` name → step-0 raw tables."""

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
  """Captures ``tables`` (pre-update) for the next unmet budget if ``nonzeros ≤`` it, at most one
  budget per step; traceable (``lax.cond``), so exact per step inside a fused scan."""
  idx = jnp.argmin(ps.reached)  # first unmet (largest remaining budget)
  trigger = (~ps.reached[idx]) & (nonzeros <= ps.budgets[idx])

  def save(ps):
    snaps = {k: ps.snapshots[k].at[idx].set(tables[k]) for k in ps.snapshots}
    return ps.replace(reached=ps.reached.at[idx].set(True), step=ps.step.at[idx].set(step),
                      nonzeros=ps.nonzeros.at[idx].set(nonzeros), snapshots=snaps)

  return jax.lax.cond(trigger, save, lambda ps: ps, ps)


def masks_from_snapshot(snapshot: dict) -> dict:
  """``mask = 1[snapshot ≠ 0]`` per table, numpy float32."""
  return {k: (np.asarray(v) != 0).astype(np.float32) for k, v in snapshot.items()}


def random_masks(masks: dict, seed: int) -> dict:
  """The random-ticket control: each table's mask with its ones moved to positions drawn uniformly
  at random (a seeded permutation of the flattened mask), so every table keeps exactly its number
  of non-zeros. ``{name: [rows, d] float32}`` in and out, numpy; the same seed gives the same masks
  on every machine (integer permutations only)."""
  rng = np.random.default_rng(seed)
  out = {}
  for k in sorted(masks):
    m = np.asarray(masks[k])
    out[k] = rng.permutation(m.reshape(-1)).reshape(m.shape).astype(np.float32)
  return out


def rewind(initial: dict, masks: dict) -> dict:
  """Lottery-ticket rewinding: ``initial ⊙ mask`` per table, numpy."""
  return {k: np.asarray(initial[k]) * masks[k] for k in masks}
