"""Magnitude pruning of a trained table: the simple baseline for element-pruned embeddings.

Global magnitude pruning keeps the ``nnz`` entries of largest ``|value|`` over the whole ``[N, d]``
table. With ``min_per_row = m`` every row first keeps its own ``m`` largest entries (so no entity is
left without a vector), and the rest of the budget goes to the largest remaining entries globally.

:func:`prune_workdir` is the frontier's ``magnitude`` method: it prunes a finished full-table run's
selected table (nothing is retrained), chooses m on validation, packs the pruned table in PEP's
format (an element-sparse ``E [N, d]``), verifies the file and evaluates its tables on test.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Sequence

import numpy as np

from cerp_jax import data as data_lib
from cerp_jax import evaluation
from cerp_jax import finalize
from cerp_jax import models
from cerp_jax import packing
from cerp_jax import sharding as shard_lib
from cerp_jax import workdir as workdir_lib

TAG = "magnitude"  # eval.json's target and the packed file's name, packed/magnitude.cerp


def magnitude_mask(table: np.ndarray, nnz: int, min_per_row: int = 0) -> np.ndarray:
  """Which entries of a trained table survive magnitude pruning.

  Args:
    table: ``[N, d]`` float array (a trained embedding table).
    nnz: entries to keep, ``N · min_per_row ≤ nnz ≤ N · d``.
    min_per_row: m, the entries each row keeps before the global ranking (0 = purely global).

  Returns:
    ``[N, d]`` bool mask with exactly ``nnz`` True entries. Ties are broken by position (row-major),
    so the mask is deterministic.

  Raises:
    ValueError: a bad shape, m outside [0, d], or nnz outside [N·m, N·d].
  """
  table = np.asarray(table)
  if table.ndim != 2:
    raise ValueError(f"table: expected [N, d], got shape {table.shape}")
  n, d = table.shape
  if not 0 <= min_per_row <= d:
    raise ValueError(f"min_per_row={min_per_row}: expected 0 ≤ m ≤ d = {d}")
  if not n * min_per_row <= nnz <= n * d:
    raise ValueError(f"nnz={nnz}: expected {n * min_per_row} ≤ nnz ≤ {n * d} "
                     f"(N = {n}, d = {d}, m = {min_per_row})")
  mag = np.abs(table.astype(np.float64))
  mask = np.zeros((n, d), bool)
  if min_per_row:
    # the m largest of each row (stable: the earlier column wins a tie)
    top = np.argsort(-mag, axis=1, kind="stable")[:, :min_per_row]
    np.put_along_axis(mask, top, True, axis=1)
  rest = nnz - int(mask.sum())
  if rest:
    flat = np.where(mask, -np.inf, mag).reshape(-1)
    keep = np.argsort(-flat, kind="stable")[:rest]
    mask.reshape(-1)[keep] = True
  return mask


def empty_rows(mask: np.ndarray) -> int:
  """Rows of a ``[N, d]`` mask with no surviving entry (entities left without a vector)."""
  return int((~np.asarray(mask).any(axis=1)).sum())


def prune(table: np.ndarray, nnz: int, min_per_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """``(pruned [N, d] float32, mask [N, d] bool)``: ``table`` with the entries outside
  :func:`magnitude_mask` set to 0.

  Raises:
    ValueError: as :func:`magnitude_mask`.
  """
  mask = magnitude_mask(table, nnz, min_per_row)
  return np.where(mask, np.asarray(table, np.float32), np.float32(0)), mask


def feasible_min_per_row(grid: Sequence[int], nnz: int, num_rows: int, dim: int) -> list[int]:
  """The values m of ``grid`` (in order, repeats dropped) with ``0 ≤ m ≤ d`` and ``N·m ≤ nnz``."""
  out = []
  for m in grid:
    if 0 <= int(m) <= dim and num_rows * int(m) <= nnz and int(m) not in out:
      out.append(int(m))
  return out


@dataclasses.dataclass(frozen=True)
class Choice:
  """The m chosen on validation and its pruned table.

  Attributes:
    min_per_row: the chosen m (the first of the tried values with the best score).
    scores: ``{m: validation score}`` of every m tried, in grid order.
    table: ``[N, d]`` float32, the trained table pruned at the chosen m.
    mask: ``[N, d]`` bool, its surviving entries (exactly ``nnz``).
  """

  min_per_row: int
  scores: dict
  table: np.ndarray
  mask: np.ndarray


def choose_min_per_row(table: np.ndarray, nnz: int, grid: Sequence[int],
                       score: Callable[[np.ndarray], float]) -> Choice:
  """Prunes ``table`` to ``nnz`` entries at every feasible m of ``grid``
  (:func:`feasible_min_per_row`) and keeps the one ``score`` (higher is better; e.g. validation
  NDCG@20 of the pruned table) rates best; a tie goes to the earlier m of ``grid``.

  Raises:
    ValueError: no m of ``grid`` is feasible (every ``N·m > nnz`` or ``m > d``), or as
      :func:`magnitude_mask`.
  """
  n, d = np.shape(table)
  tried = feasible_min_per_row(grid, nnz, n, d)
  if not tried:
    raise ValueError(f"min_per_row grid {tuple(grid)}: no m with 0 ≤ m ≤ d = {d} and N·m ≤ nnz "
                     f"(N = {n}, nnz = {nnz})")
  scores, best = {}, None
  for m in tried:
    pruned, mask = prune(table, nnz, m)
    scores[m] = float(score(pruned))
    if best is None or scores[m] > scores[best[0]]:
      best = (m, pruned, mask)
  return Choice(best[0], scores, best[1], best[2])


def table_evaluator(model: models.Recommender, variables: dict, plan: shard_lib.ShardingPlan,
                    progress: bool = False) -> Callable:
  """``(evaluator, tables) -> metrics``: ``evaluator``'s full ranking of the model whose embedding
  reads ``tables`` (``{'E': [N, d] float32}``) instead of its own; the backbone (MF, NCF-MLP,
  LightGCN's propagation of the layer-0 table) as restored. The score function is built once, so
  repeated calls reuse its compilation."""
  score_fn = models.make_score_fn(model, model.num_users)
  vectors_fn = models.make_vectors_fn(model)

  def evaluate(evaluator: evaluation.Evaluator, tables: dict) -> dict:
    v = plan.put(finalize.variables_from_tables(variables, tables))
    return evaluator.evaluate(score_fn, (v, vectors_fn(v)), progress=progress)

  return evaluate


def prune_workdir(reference_workdir: str, workdir: str, nnz: int, grid: Sequence[int],
                  value_dtype: str = "float32") -> dict:
  """The ``magnitude`` method: prunes a finished full-table run, packs, verifies, evaluates.

  1. restore ``reference_workdir``'s selected checkpoint (:func:`cerp_jax.finalize.restore_best`;
     its config gives data, backbone, ``eval`` and the sharding plan);
  2. for each feasible m of ``grid`` prune its ``E [N, d]`` to ``nnz`` entries
     (:func:`magnitude_mask`) and score the table the file will hold (``value_dtype``'s
     dequantized values) by ``config.eval.selection_metric`` on ``config.eval.selection_split``;
     keep the best m (:func:`choose_min_per_row`);
  3. pack it in PEP's format (meta method 'pep': the element-sparse ``E [N, d]``) in
     ``value_dtype``, write ``workdir/packed/magnitude.cerp``, read it back and check the meta and
     the table (equal to the masked table, or its quantize-then-dequantize values);
  4. evaluate the file's tables on test (``config.eval.test_user_sample``).

  Nothing is trained. ``workdir`` gets ``packed/magnitude.cerp`` and ``eval.json``.

  Args:
    reference_workdir: a finished train.py workdir of a full table (``model.embedding = 'full'``).
    workdir: where the packed file and eval.json go (created).
    nnz: entries kept, at most N·d (the sizing of :func:`cerp_jax.budget.solve` 'magnitude').
    grid: the values of m to try (infeasible ones skipped).
    value_dtype: the packed values' dtype (``packing.VALUE_DTYPES``).

  Returns:
    eval.json's content: ``results`` holds one row (``target`` 'magnitude', ``packed_bytes`` (the
    file's size), ``nonzeros``, ``packed_layouts``, ``packed_file``, the test metrics
    (``recall@20`` …), ``num_users_evaluated``, ``sampled``) and ``magnitude`` (``selection``,
    ``scores`` per m tried, the chosen ``min_per_row``, its ``valid_selection``, its
    ``empty_rows`` / ``empty_user_rows`` / ``empty_item_rows``, ``seconds``).

  Raises:
    ValueError: the reference is not a full table, or no m of ``grid`` is feasible.
    CheckpointError: the reference has not finished.
    AssertionError: the packed file does not round-trip (a packing bug).
  """
  t0 = time.perf_counter()
  config = workdir_lib.load_config(reference_workdir)
  if config.model.embedding != "full":
    raise ValueError(f"{reference_workdir}: model.embedding={config.model.embedding!r}; magnitude "
                     "pruning needs a full-table run")
  data = data_lib.load_interactions(config)
  plan = shard_lib.ShardingPlan.from_config(config)
  model, variables, restored = finalize.restore_best(config, data, reference_workdir, None, plan)
  table = shard_lib.to_host(model.apply(variables, method=models.Recommender.tables))["E"]
  ec = config.eval
  evaluate = table_evaluator(model, variables, plan, config.progress_bar)
  valid = evaluation.Evaluator(data, ec.selection_split, ec.ks, ec.batch_size,
                               user_sample=ec.user_sample, seed=ec.sample_seed, plan=plan)
  choice = choose_min_per_row(table, nnz, grid, lambda t: evaluate(
      valid, finalize.dequantized({"E": t}, value_dtype))[ec.selection_metric])
  unpacked, row = _pack_and_check(config, data, choice, workdir, value_dtype)
  test = evaluation.Evaluator(data, "test", ec.ks, ec.batch_size, user_sample=ec.test_user_sample,
                              seed=ec.sample_seed, plan=plan)
  res = evaluate(test, unpacked)
  row.update({k: v for k, v in res.items() if "@" in k},
             num_users_evaluated=res["num_users_evaluated"], sampled=res["sampled"])
  u = data.num_users
  info = {"selection": f"{ec.selection_split} {ec.selection_metric}", "nonzeros": int(nnz),
          "grid": [int(m) for m in grid], "scores": {str(m): v for m, v in choice.scores.items()},
          "min_per_row": choice.min_per_row,
          "valid_selection": choice.scores[choice.min_per_row],
          "empty_rows": empty_rows(choice.mask), "empty_user_rows": empty_rows(choice.mask[:u]),
          "empty_item_rows": empty_rows(choice.mask[u:]),
          "reference_best_epoch": restored.get("best_epoch"),
          "seconds": time.perf_counter() - t0}
  out = {"workdir": os.path.abspath(workdir), "reference_workdir": os.path.abspath(
      reference_workdir), "dataset": config.data.name, "backbone": config.model.backbone,
         "embedding": TAG, "dim": int(config.model.dim), "num_entities": data.num_entities,
         "results": [row], "magnitude": info}
  if shard_lib.is_primary():
    workdir_lib.write_json(os.path.join(workdir, "eval.json"), out, sort_keys=False)
  return out


def _pack_and_check(config, data: data_lib.Interactions, choice: Choice, workdir: str,
                    value_dtype: str) -> tuple[dict, dict]:
  """Packs ``choice.table`` as PEP's ``E`` into ``workdir/packed/magnitude.cerp`` and reads it back:
  ``(unpacked tables, eval.json row without metrics)``.

  Raises:
    AssertionError: the meta or the table does not round-trip, or a pruned entry came back.
  """
  meta = dataclasses.replace(packing.PackedMeta.from_config(
      config, data.num_users, data.num_items, value_dtype), method="pep")
  tables = {"E": choice.table}
  blob, report = packing.pack(tables, meta)
  path = os.path.join(workdir, "packed", f"{TAG}.cerp")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  packed_bytes = packing.write(path, blob) if shard_lib.is_primary() else len(blob)
  unpacked, meta_back = packing.unpack(path if shard_lib.is_primary() else blob, with_meta=True)
  assert meta_back == meta, f"{path}: the meta does not round-trip"
  assert np.array_equal(unpacked["E"], finalize.dequantized(tables, value_dtype)["E"]), (
      f"{path}: table E does not round-trip")
  assert not np.any(unpacked["E"][~choice.mask]), f"{path}: a pruned entry is non-zero"
  n, d = choice.table.shape
  return unpacked, {
      "target": TAG, "min_per_row": choice.min_per_row, "nonzeros": report["nonzeros"],
      "num_entries": n * d, "sparsity": 1 - report["nonzeros"] / (n * d),
      "packed_bytes": packed_bytes, "packed_file": path,
      "packed_layouts": {k: v["layout"] for k, v in report["tables"].items()},
      "full_table_bytes": packing.full_table_bytes(n, d), "value_dtype": value_dtype}
