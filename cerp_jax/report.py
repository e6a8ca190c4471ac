"""eval.py's logic: restore each budget's selected model, pack its tables, verify, evaluate, report.

For every retrained budget (or the full-table run) of a workdir:

1. restore the selected checkpoint (``retrain/<tag>/checkpoints``, item ``best``);
2. pack the effective tables (retrained values under the snapshot's mask) with
   :mod:`cerp_jax.packing`, write ``packed/<tag>.cerp``; ``packed_bytes`` is that file's size;
3. read the file back and check the tables are bit-identical, and that scoring from the packed tables
   gives the same top-K for every evaluated user as the dense ones;
4. evaluate on test (full ranking, or the config's seeded user sample; said in every output).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cerp_jax import data as data_lib
from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import models
from cerp_jax import packing
from cerp_jax import sharding as shard_lib
from cerp_jax import train as train_lib


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict train.py stored in ``workdir/config.json`` (lists back to tuples).

  Raises:
    FileNotFoundError: no config.json (not a train.py workdir).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a train.py workdir?")
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)

  def fix(x):
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(fix(v) for v in x)
    return x

  return ml_collections.ConfigDict(fix(raw))


def _tree_bytes(tree) -> int:
  return int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)))


def evaluate_workdir(workdir: str, user_sample: int = -1, batch_size: int = 0,
                     mesh_shape=None) -> dict:
  """Runs steps 1–4 above for every finished budget; writes and returns ``eval.json``'s content.

  Scoring batches are split over the devices of the config's mesh (``mesh_shape`` overrides the
  training config's ``mesh_shape``; one that does not fit the devices here falls back to all of them
  on 'data', with a warning); in a multi-process run only process 0 writes files.

  Raises:
    FileNotFoundError / CheckpointError: not a workdir, or nothing finished to evaluate.
    AssertionError: packed tables do not round-trip or change the top-K (a packing bug).
  """
  config = load_workdir_config(workdir)
  ec = config.eval
  data = data_lib.load_interactions(config)
  sample = ec.test_user_sample if user_sample < 0 else user_sample
  try:
    plan = shard_lib.ShardingPlan.from_config(config, mesh_shape=mesh_shape)
  except ValueError as e:  # trained on another device count: evaluate on all devices here
    if mesh_shape is not None:
      raise
    logging.warning("%s; evaluating with every device on 'data'", e)
    plan = shard_lib.ShardingPlan.from_config(config, mesh_shape=(-1,) + (1,) * (
        len(config.get("mesh_axes", ("data",))) - 1))
  evaluator = evaluation.Evaluator(data, "test", ec.ks, batch_size or ec.batch_size,
                                   user_sample=sample, seed=ec.sample_seed, plan=plan)
  targets = (sorted(config.target_sparsities) if emb_lib.prunes(config.model.embedding) else [None])
  # Packed files go to a staging folder and replace packed/ and eval.json only once every budget has
  # passed its checks: a failure leaves the previous packed/ and eval.json as they were.
  staging = os.path.join(workdir, "packed.staging")
  final_dir = os.path.join(workdir, "packed")
  if shard_lib.is_primary():
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
  n, d = data.num_entities, config.model.dim
  full_bytes = packing.full_table_bytes(n, d)
  try:
    rows = []
    for target in targets:
      tag = train_lib.target_tag(target)
      result_path = os.path.join(workdir, "retrain", tag, "result.json")
      if not os.path.exists(result_path):
        logging.warning("%s: no finished retraining, skipped", tag)
        continue
      with open(result_path, encoding="utf-8") as f:
        train_result = json.load(f)
      model, variables, _ = train_lib.restore_best(config, data, workdir, target, plan)
      tables = shard_lib.to_host(model.apply(variables, method=models.Recommender.tables))
      blob, pack_report = packing.pack(tables)
      path = os.path.join(staging, f"{tag}.cerp")
      primary = shard_lib.is_primary()
      packed_bytes = packing.write(path, blob) if primary else len(blob)
      unpacked = packing.unpack(path if primary else blob)
      for k in tables:
        assert np.array_equal(unpacked[k], tables[k]), f"{path}: table {k} does not round-trip"
      packed_vars = plan.put(_variables_from_tables(model, variables, unpacked))
      score_fn = train_lib.make_score_fn(model, data.num_users)
      vectors_fn = train_lib.make_vectors_fn(model)
      dense = evaluator.evaluate(score_fn, (variables, vectors_fn(variables)), return_topk=True,
                                 progress=config.progress_bar)
      packed = evaluator.evaluate(score_fn, (packed_vars, vectors_fn(packed_vars)), return_topk=True,
                                  progress=config.progress_bar)
      topk_match = bool(np.array_equal(dense["topk"], packed["topk"]))
      assert topk_match, f"{tag}: top-K from the packed tables differs from the dense tables"
      nnz = pack_report["nonzeros"]
      backbone = shard_lib.to_host(variables["params"].get("backbone", {}))
      row = {
          "target": tag, "target_sparsity": target,
          "nonzeros": nnz,
          "num_entries": int(sum(t.size for t in tables.values())),
          "sparsity": 1 - nnz / sum(t.size for t in tables.values()),
          "sparsity_vs_full": 1 - nnz / (n * d),
          "packed_bytes": packed_bytes, "packed_file": os.path.join(final_dir, f"{tag}.cerp"),
          "packed_layouts": {k: v["layout"] for k, v in pack_report["tables"].items()},
          "bytes_by_layout": {k: {l: v[f"bytes_{l}"] for l in packing.LAYOUTS}
                              for k, v in pack_report["tables"].items()},
          "full_table_bytes": full_bytes, "compression_ratio": full_bytes / packed_bytes,
          "backbone_bytes": _tree_bytes(backbone) + _tree_bytes(variables.get("batch_stats", {})),
          "topk_match_packed_vs_dense": topk_match,
          "best_epoch": train_result.get("best_epoch"),
          "snapshot_step": train_result.get("snapshot", {}).get("step"),
          "num_users_evaluated": dense["num_users_evaluated"],
          "num_users_total": dense["num_users_total"], "sampled": dense["sampled"],
          "eval_seconds": dense["seconds"],
      }
      for k, v in dense.items():
        if "@" in k:
          row[k] = v
      rows.append(row)
      logging.info("%s: %d non-zeros, %d packed bytes (%.1fx smaller than the full table); test %s",
                   tag, nnz, packed_bytes, row["compression_ratio"], evaluation.describe(dense))
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left
    raise
  if not rows:
    shutil.rmtree(staging, ignore_errors=True)
    raise FileNotFoundError(f"{workdir}: no finished retraining to evaluate; run train.py first")
  out = {"workdir": os.path.abspath(workdir), "dataset": config.data.name,
         "backbone": config.model.backbone, "embedding": config.model.embedding,
         "dim": d, "num_entities": n, "bucket_size": config.model.bucket_size,
         "threshold_init": emb_lib.resolved_threshold_init(config),
         "paper_threshold_init": emb_lib.resolved_threshold_init(config) == -100.0,
         "selection": f"{ec.selection_split} {ec.selection_metric}", "results": rows}
  if not shard_lib.is_primary():
    return out
  tmp = os.path.join(workdir, "eval.json.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=2)
  shutil.rmtree(final_dir, ignore_errors=True)
  os.replace(staging, final_dir)
  os.replace(tmp, os.path.join(workdir, "eval.json"))
  return out


def _variables_from_tables(model, variables, tables):
  """Variables whose embedding reads the given (unpacked) effective tables."""
  v = jax.tree_util.tree_map(lambda x: x, variables)
  emb = dict(v["params"]["embedding"])
  for k, t in tables.items():
    emb[k] = jnp.asarray(t)
  v["params"] = {**v["params"], "embedding": emb}
  if "masks" in v:
    v["masks"] = {"embedding": {k: jnp.asarray((t != 0).astype(np.float32))
                                for k, t in tables.items()}}
  del model
  return v


def _fmt_metric(row, k):
  v = row.get(k)
  if v is None:
    return "–"
  s = f"{v:.4f}"
  if row.get("sampled") and f"{k}_ci95" in row:
    s += f" ± {row[k + '_ci95']:.4f}"
  return s


def markdown_table(out: dict) -> str:
  """eval.py's Markdown table: one row per budget."""
  rows = out["results"]
  sampled = any(r.get("sampled") for r in rows)
  cerp = (f", b={out['bucket_size']}, thresholds init {out['threshold_init']:g}"
          + ("" if out["paper_threshold_init"] else " (NOT the paper's -100)")
          if out["embedding"] == "cerp" else "")
  lines = [f"{out['dataset']} / {out['backbone']} / {out['embedding']} (d={out['dim']}, "
           f"N={out['num_entities']}{cerp}); test, " + (
               f"SEEDED SAMPLE of {rows[0]['num_users_evaluated']} of {rows[0]['num_users_total']} "
               "users (± = 95 % CI)" if sampled else
               f"full ranking of all {rows[0]['num_users_evaluated']} test users"), "",
           "| target | non-zeros | sparsity | packed bytes | layout | ratio vs full | Recall@20 | "
           "NDCG@20 | Recall@50 | NDCG@50 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    layouts = ",".join(sorted(set(r["packed_layouts"].values())))
    lines.append(f"| {r['target']} | {r['nonzeros']:,} | {r['sparsity']:.4f} | "
                 f"{r['packed_bytes']:,} | {layouts} | {r['compression_ratio']:.1f}x | "
                 f"{_fmt_metric(r, 'recall@20')} | {_fmt_metric(r, 'ndcg@20')} | "
                 f"{_fmt_metric(r, 'recall@50')} | {_fmt_metric(r, 'ndcg@50')} |")
  lines.append(f"\nfull float32 table: {rows[0]['full_table_bytes']:,} bytes")
  return "\n".join(lines)


def training_table(results: dict) -> str:
  """train.py's closing table: one row per retrained budget (test metrics of the selection)."""
  lines = ["| run | best epoch | test Recall@20 | test NDCG@20 | users | train s |",
           "|---|---|---|---|---|---|"]
  for tag, r in results.items():
    t = r["test"]
    who = (f"{t['num_users_evaluated']}/{t['num_users_total']} sampled" if t.get("sampled") else
           f"all {t['num_users_evaluated']}")
    lines.append(f"| {tag} | {r['best_epoch']} | {_fmt_metric(t, 'recall@20')} | "
                 f"{_fmt_metric(t, 'ndcg@20')} | {who} | {r['train_seconds']:.0f} |")
  return "\n".join(lines)
