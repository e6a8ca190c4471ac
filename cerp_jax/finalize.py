"""eval.py's logic: restore each budget's selected model, pack its tables, verify, evaluate, report.

For every retrained budget (or the full-table run) of a workdir:

1. restore the selected checkpoint (``retrain/<tag>/checkpoints``, item ``best``);
2. pack the effective tables (retrained values under the snapshot's mask) with
   :mod:`cerp_jax.packing` in ``config.pack.value_dtype`` (float32 | float16 | int8: post-training
   quantization of the float32 model), with the meta that makes the file self-describing (method,
   id layout, d, value dtype, backbone), write ``packed/<tag>.cerp``; ``packed_bytes`` is that
   file's size;
3. read the file back and check the meta is equal and the tables are bit-identical to the tables
   (float32) or to their quantize-then-dequantize values (float16, int8), and, for float32, that
   scoring from the packed tables gives the same top-K for every evaluated user as the dense ones;
4. evaluate the packed file's tables on test (full ranking, or the config's seeded user sample; said
   in every output), and, for comparison, the float32 tables and the tables after each
   post-training quantization of ``quantized`` (float16, int8 by default), with their packed bytes
   and metric changes against float32.

It also formats the Markdown tables eval.py (:func:`markdown_table`) and train.py
(:func:`training_table`) print.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Callable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from cerp_jax import checkpoint as ckpt_lib
from cerp_jax import data as data_lib
from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import models
from cerp_jax import packing
from cerp_jax import sharding as shard_lib
from cerp_jax import train as train_lib
from cerp_jax import workdir as workdir_lib


def restore_best(config, data: data_lib.Interactions, workdir: str, target: Optional[float],
                 plan: Optional[shard_lib.ShardingPlan] = None, allow_unfinished: bool = False):
  """``(model, variables, meta)`` of the selected checkpoint of one retrain run.

  The variables (``params``, ``batch_stats``, ``masks``, LightGCN's graph) are placed on ``plan``'s
  mesh (default: the config's), whatever device count wrote the checkpoint. The newest checkpoint
  that reads and verifies is used; ``meta['checkpoint']`` says which
  (:attr:`CheckpointStore.last_restore` plus ``finished``: that checkpoint's run had ended), so a
  caller can tell a fallback to an older checkpoint from the run's final one.

  Raises:
    CheckpointError: the run is missing or unfinished, no checkpoint verifies, or the restored one
      holds no selected parameters yet.
  """
  tag = workdir_lib.target_tag(target)
  mode = emb_lib.RETRAIN if target is not None else emb_lib.DENSE
  model = models.create_model(config, data, mode)
  like = train_lib.create_train_state(config, model, train_lib.RETRAIN)
  plan = plan or shard_lib.ShardingPlan.from_config(config)
  best_like = {"params": like.params, "batch_stats": like.batch_stats}
  like = plan.put(like)
  store = ckpt_lib.CheckpointStore(os.path.join(workdir_lib.retrain_dir(workdir, target),
                                                "checkpoints"))
  if store.latest() is None:
    raise ckpt_lib.CheckpointError(f"{store.directory}: no checkpoint; run train.py first")
  state, meta, best = store.restore(like, plan.put(best_like))
  store.close()
  info = store.last_restore
  if not meta.get("done") and not info["fallback"] and not allow_unfinished:
    raise ckpt_lib.CheckpointError(f"{store.directory}: retraining of {tag} has not finished; "
                                   "rerun train.py to resume it")
  if best is None:
    raise ckpt_lib.CheckpointError(
        f"{store.directory}: checkpoint {info['checkpoint']} holds no selected parameters (saved "
        "before the first evaluation)" + (f"; {info['message']}" if info["fallback"] else ""))
  meta["checkpoint"] = {**info, "finished": bool(meta.get("done"))}
  return model, models.model_variables(best["params"], best["batch_stats"], state.masks,
                                       plan.put(models.model_consts(config, data))), meta


def pack_value_dtype(config) -> str:
  """``config.pack.value_dtype``; 'float32' for a workdir written before the field existed."""
  return config.get("pack", {}).get("value_dtype", "float32")


def dequantized(tables: dict, value_dtype: str) -> dict:
  """``{name: [rows, cols] float32}``: each table as the packed file of ``value_dtype`` gives it
  back (:func:`cerp_jax.packing.quantize` then decode; the tables themselves for float32)."""
  if value_dtype == "float32":
    return tables
  return {k: packing.decode_table(packing.encode_table(np.asarray(t, np.float32), "dense",
                                                       value_dtype))
          for k, t in tables.items()}


def _metrics(res: dict) -> dict:
  return {k: v for k, v in res.items() if "@" in k and not k.endswith("_ci95")}


def _quantized_row(packed_bytes: int, res: dict, float32: dict) -> dict:
  """One entry of a row's ``quantized``: packed bytes, the metrics and ``delta_<metric>`` =
  metric − the float32 tables' metric."""
  m = _metrics(res)
  return {"packed_bytes": int(packed_bytes), **m,
          **{f"delta_{k}": v - float32[k] for k, v in m.items() if k in float32}}


def _quantize_and_evaluate(tables: dict, meta: packing.PackedMeta, evaluate_tables,
                           float32: dict) -> dict:
  """Packs ``tables`` with ``meta`` (its value dtype) in memory, reads the file back and evaluates
  the dequantized tables with ``evaluate_tables(tables) -> metrics``; :func:`_quantized_row`."""
  blob, _ = packing.pack(tables, meta)
  return _quantized_row(len(blob), evaluate_tables(packing.unpack(blob)), float32)


def variables_from_tables(variables: dict, tables: dict) -> dict:
  """Variables whose embedding reads the given (unpacked) effective tables ``{name: numpy}``: the
  tables as its parameters and, when it has masks, ``tables ≠ 0`` as its masks."""
  v = jax.tree_util.tree_map(lambda x: x, variables)
  emb = dict(v["params"]["embedding"])
  for k, t in tables.items():
    emb[k] = jnp.asarray(t)
  v["params"] = {**v["params"], "embedding": emb}
  if "masks" in v:
    v["masks"] = {"embedding": {k: jnp.asarray((t != 0).astype(np.float32))
                                for k, t in tables.items()}}
  return v


def _tree_bytes(tree) -> int:
  return int(sum(np.asarray(x).nbytes for x in jax.tree_util.tree_leaves(tree)))


def evaluate_workdir(workdir: str, user_sample: int = -1, batch_size: int = 0,
                     mesh_shape=None, allow_fallback: bool = False,
                     reference: Optional[str] = None,
                     quantized: Sequence[str] = ("float16", "int8"),
                     value_dtype: Optional[str] = None) -> dict:
  """Runs steps 1–4 above for every finished budget; writes and returns ``eval.json``'s content.

  Scoring batches are split over the devices of the config's mesh (``mesh_shape`` overrides the
  training config's ``mesh_shape``; one that does not fit the devices here falls back to all of them
  on 'data', with a warning); in a multi-process run only process 0 writes files.

  Each row's ``checkpoint`` says which retrain checkpoint it was evaluated from; ``fallback: true``
  when the newest was unreadable or failed its digests and an older one was used (its metrics may
  differ from result.json's). ``allow_fallback=False`` makes such a fallback an error, raised
  after eval.json (which records it) is written. ``reference``: a finished full-table workdir
  (``train.py --config=…:full``); each row then gets ``recall@20_kept``, its Recall@20 as a share
  of the reference's test Recall@20 (:func:`reference_metrics`).

  Each row's metrics (``recall@20`` …) are those of the packed file's tables, in
  ``value_dtype`` (None: ``config.pack.value_dtype``); ``float32`` holds the float32 tables' metrics
  and packed bytes;
  ``quantized`` maps each value dtype of ``quantized`` (post-training quantization of the same
  float32 tables, packed in memory, read back and evaluated by the same Evaluator) to
  ``{packed_bytes, <metric>…, delta_<metric>…}`` (delta = metric − float32's); ``()`` skips them.

  Raises:
    FileNotFoundError / CheckpointError: not a workdir, or nothing finished to evaluate; a budget was
      evaluated from a fallback checkpoint and ``allow_fallback`` is False.
    AssertionError: packed tables do not round-trip or change the top-K (a packing bug).
    ValueError: a value dtype of ``quantized`` or of ``config.pack`` that packing does not know.
  """
  config = workdir_lib.load_config(workdir)
  value_dtype = value_dtype or pack_value_dtype(config)
  for dt in (value_dtype, *quantized):
    if dt not in packing.VALUE_DTYPES:
      raise ValueError(f"value dtype {dt!r}: expected one of {tuple(packing.VALUE_DTYPES)}")
  ref = reference_metrics(reference) if reference else None  # checked before any work
  ec = config.eval
  data = data_lib.load_interactions(config)
  sample = ec.test_user_sample if user_sample < 0 else user_sample
  plan = _eval_plan(config, mesh_shape)
  evaluator = evaluation.Evaluator(data, "test", ec.ks, batch_size or ec.batch_size,
                                   user_sample=sample, seed=ec.sample_seed, plan=plan)
  targets = (sorted(config.target_sparsities) if emb_lib.prunes(config.model.embedding) else [None])
  # Packed files go to a staging folder and replace packed/ and eval.json only once every budget has
  # passed its checks: a failure leaves the previous packed/ and eval.json as they were.
  staging = os.path.join(workdir, "packed.staging")
  if shard_lib.is_primary():
    recover_packed_swap(workdir)
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
  ctx = _Context(config, data, workdir, plan, evaluator, value_dtype, tuple(quantized), staging)
  try:
    rows = [row for row in map(ctx.evaluate_target, targets) if row is not None]
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left
    raise
  if not rows:
    shutil.rmtree(staging, ignore_errors=True)
    raise FileNotFoundError(f"{workdir}: no finished retraining to evaluate; run train.py first")
  out = _eval_json(config, data, workdir, rows, ref, allow_fallback)
  pop = evaluation.most_popular_metrics(evaluator, data.train)
  out["most_popular"] = {k: v for k, v in pop.items() if "@" in k}
  if shard_lib.is_primary():
    workdir_lib.write_json(os.path.join(workdir, "eval.json.tmp"), out, sort_keys=False)
    swap_packed(workdir, staging)
  return _check_fallbacks(out, allow_fallback)


def _eval_plan(config, mesh_shape) -> shard_lib.ShardingPlan:
  """The config's mesh (or ``mesh_shape``); trained on another device count: every device here on
  'data' (with a warning).

  Raises:
    ValueError: a given ``mesh_shape`` does not fit the devices.
  """
  try:
    return shard_lib.ShardingPlan.from_config(config, mesh_shape=mesh_shape)
  except ValueError as e:  # trained on another device count: evaluate on all devices here
    if mesh_shape is not None:
      raise
    logging.warning("%s; evaluating with every device on 'data'", e)
    return shard_lib.ShardingPlan.from_config(config, mesh_shape=(-1,) + (1,) * (
        len(config.get("mesh_axes", ("data",))) - 1))


@dataclasses.dataclass(frozen=True)
class _Context:
  """What :func:`evaluate_workdir` evaluates every budget with."""

  config: object
  data: data_lib.Interactions
  workdir: str
  plan: shard_lib.ShardingPlan
  evaluator: evaluation.Evaluator
  value_dtype: str
  quantized: tuple
  staging: str

  def evaluate_target(self, target: Optional[float]) -> Optional[dict]:
    """eval.json's row of one budget (None, with a warning, when it has no finished retraining):
    restore, pack into the staging folder, verify, evaluate the packed, float32 and quantized
    tables."""
    tag = workdir_lib.target_tag(target)
    result_path = workdir_lib.result_path(self.workdir, target)
    if not os.path.exists(result_path):
      logging.warning("%s: no finished retraining, skipped", tag)
      return None
    train_result = workdir_lib.read_json(result_path)
    model, variables, restored = restore_best(self.config, self.data, self.workdir, target,
                                              self.plan)
    tables = shard_lib.to_host(model.apply(variables, method=models.Recommender.tables))
    meta = packing.PackedMeta.from_config(self.config, self.data.num_users, self.data.num_items,
                                          self.value_dtype)
    blob, pack_report = packing.pack(tables, meta)
    packed_bytes, unpacked = self._write_and_check(tag, blob, meta, tables)
    evaluate = self._evaluate_fn(model, variables)
    dense, packed = evaluate(None, True), evaluate(unpacked, True)
    topk_match = bool(np.array_equal(dense["topk"], packed["topk"]))
    assert topk_match or self.value_dtype != "float32", (
        f"{tag}: top-K from the packed tables differs from the dense tables")
    float32 = _metrics(dense)
    f32_bytes = packed_bytes if self.value_dtype == "float32" else len(
        packing.pack(tables, dataclasses.replace(meta, value_dtype="float32"))[0])
    ptq = {dt: (_quantized_row(packed_bytes, packed, float32) if dt == self.value_dtype else
                _quantize_and_evaluate(tables, dataclasses.replace(meta, value_dtype=dt),
                                       lambda t: evaluate(t, False), float32))
           for dt in self.quantized}
    row = self._row(tag, target, tables, pack_report, packed_bytes, variables, topk_match,
                    restored, train_result, dense)
    for k, v in packed.items():
      if "@" in k:
        row[k] = v
    row.update(float32={"packed_bytes": f32_bytes, **float32}, quantized=ptq)
    logging.info("%s: %d non-zeros, %d packed bytes (%.1fx smaller than the full table); test %s",
                 tag, row["nonzeros"], packed_bytes, row["compression_ratio"],
                 evaluation.describe(packed))
    return row

  def _write_and_check(self, tag: str, blob: bytes, meta: packing.PackedMeta, tables: dict):
    """Writes ``staging/<tag>.cerp`` (process 0) and reads it back: ``(file bytes, tables)``.

    Raises:
      AssertionError: the meta or a table does not round-trip (to the dequantized values).
    """
    path = os.path.join(self.staging, f"{tag}.cerp")
    primary = shard_lib.is_primary()
    packed_bytes = packing.write(path, blob) if primary else len(blob)
    unpacked, meta_back = packing.unpack(path if primary else blob, with_meta=True)
    assert meta_back == meta, f"{path}: the meta does not round-trip"
    expected = dequantized(tables, self.value_dtype)
    for k in tables:
      assert np.array_equal(unpacked[k], expected[k]), f"{path}: table {k} does not round-trip"
    return packed_bytes, unpacked

  def _evaluate_fn(self, model: models.Recommender, variables: dict) -> Callable:
    """``(tables or None, topk) -> metrics`` of the evaluator: the restored variables with their
    embedding's tables replaced by ``tables`` (None: as restored)."""
    score_fn = models.make_score_fn(model, self.data.num_users)
    vectors_fn = models.make_vectors_fn(model)

    def evaluate(tables, topk: bool) -> dict:
      v = variables if tables is None else self.plan.put(variables_from_tables(variables, tables))
      kwargs = {"return_topk": True} if topk else {}
      return self.evaluator.evaluate(score_fn, (v, vectors_fn(v)), progress=self.config.progress_bar,
                                     **kwargs)

    return evaluate

  def _row(self, tag, target, tables, pack_report, packed_bytes, variables, topk_match, restored,
           train_result, dense) -> dict:
    """eval.json's row of one budget, before its metrics."""
    n, d = self.data.num_entities, self.config.model.dim
    full_bytes = packing.full_table_bytes(n, d)
    nnz = pack_report["nonzeros"]
    backbone = shard_lib.to_host(variables["params"].get("backbone", {}))
    return {
        "target": tag, "target_sparsity": target,
        "nonzeros": nnz,
        "num_entries": int(sum(t.size for t in tables.values())),
        "sparsity": 1 - nnz / sum(t.size for t in tables.values()),
        "sparsity_vs_full": 1 - nnz / (n * d),
        "packed_bytes": packed_bytes,
        "packed_file": os.path.join(self.workdir, "packed", f"{tag}.cerp"),
        "packed_layouts": {k: v["layout"] for k, v in pack_report["tables"].items()},
        "bytes_by_layout": {k: {l: v[f"bytes_{l}"] for l in packing.LAYOUTS}
                            for k, v in pack_report["tables"].items()},
        "full_table_bytes": full_bytes, "compression_ratio": full_bytes / packed_bytes,
        "backbone_bytes": _tree_bytes(backbone) + _tree_bytes(variables.get("batch_stats", {})),
        "value_dtype": self.value_dtype, "topk_match_packed_vs_dense": topk_match,
        "best_epoch": restored.get("best_epoch"),
        "checkpoint": _checkpoint_record(restored, train_result),
        "snapshot_step": train_result.get("snapshot", {}).get("step"),
        "num_users_evaluated": dense["num_users_evaluated"],
        "num_users_total": dense["num_users_total"], "sampled": dense["sampled"],
        "eval_seconds": dense["seconds"],
    }


def _eval_json(config, data: data_lib.Interactions, workdir: str, rows: list,
               ref: Optional[dict], allow_fallback: bool) -> dict:
  """eval.json's content: the run's description, the rows, the reference's share, fallbacks."""
  ec = config.eval
  out = {"workdir": os.path.abspath(workdir), "dataset": config.data.name,
         "backbone": config.model.backbone, "embedding": config.model.embedding,
         "dim": config.model.dim, "num_entities": data.num_entities,
         "bucket_size": config.model.bucket_size,
         "threshold_init": emb_lib.resolved_threshold_init(config),
         "paper_threshold_init": emb_lib.resolved_threshold_init(config) == -100.0,
         "selection": f"{ec.selection_split} {ec.selection_metric}", "results": rows}
  if ref:
    out["reference"] = ref
    for r in rows:
      r["recall@20_kept"] = r["recall@20"] / out["reference"]["recall@20"]
  out["checkpoint_fallbacks"] = [r["target"] for r in rows if r["checkpoint"]["fallback"]]
  out["fallback_allowed"] = allow_fallback
  return out


def reference_metrics(reference: str) -> dict:
  """Test Recall/NDCG@20 of the uncompressed reference: a finished full-table workdir (its eval.json
  if eval.py ran there, else train.py's ``retrain/full/result.json``), or a ``.json`` file recording
  such a run (``{"recall@20", "ndcg@20", "source"}``, e.g. docs/results/reference_*.json; ``source``
  names the run and its command).

  Returns:
    ``{'workdir': the workdir or the source named, 'recall@20', 'ndcg@20'}``.

  Raises:
    FileNotFoundError: neither file exists (not a finished full-table workdir), or no such file.
    ValueError: a reference file without the three fields, or not JSON.
  """
  if reference.endswith(".json"):
    try:
      rec = workdir_lib.read_json(reference)
    except json.JSONDecodeError as e:
      raise ValueError(f"--reference={reference}: not JSON ({e.msg}, line {e.lineno})") from None
    missing = [k for k in ("recall@20", "ndcg@20", "source") if k not in rec]
    if missing:
      raise ValueError(f"--reference={reference}: missing field(s) {missing}")
    return {"workdir": str(rec["source"]), "recall@20": float(rec["recall@20"]),
            "ndcg@20": float(rec["ndcg@20"])}
  ev, res = os.path.join(reference, "eval.json"), workdir_lib.result_path(reference, None)
  if os.path.exists(ev):
    row = workdir_lib.read_json(ev)["results"][0]
  elif os.path.exists(res):
    row = workdir_lib.read_json(res)["test"]
  else:
    raise FileNotFoundError(f"--reference={reference}: neither eval.json nor {res} exists (is it a "
                            "finished full-table run?)")
  return {"workdir": os.path.abspath(reference), "recall@20": row["recall@20"],
          "ndcg@20": row["ndcg@20"]}


def _checkpoint_record(restored: dict, train_result: dict) -> dict:
  """eval.json's ``checkpoint`` for one budget: the retrain checkpoint evaluated (``number`` of
  ``newest``), ``fallback`` (an older one because the newer failed: ``skipped`` says why),
  ``verified`` (digests checked; False for checkpoints written before digests), ``finished``
  (that checkpoint's retraining had ended), its ``best_epoch`` and result.json's."""
  info = restored["checkpoint"]
  return {"directory": info["directory"], "number": info["checkpoint"], "newest": info["newest"],
          "fallback": info["fallback"], "verified": info["verified"], "finished": info["finished"],
          "skipped": info["skipped"], "best_epoch": restored.get("best_epoch"),
          "result_json_best_epoch": train_result.get("best_epoch")}


def _check_fallbacks(out: dict, allow_fallback: bool) -> dict:
  """Returns ``out``; a budget evaluated from a fallback checkpoint is logged (allowed) or raised.

  Raises:
    CheckpointError: a fallback and not ``allow_fallback`` (one line, naming budget and checkpoints).
  """
  rows = [r for r in out["results"] if r["checkpoint"]["fallback"]]
  if not rows:
    return out
  r = rows[0]
  c = r["checkpoint"]
  line = (f"{r['target']} was evaluated from checkpoint {c['number']} of {c['directory']}, not the "
          f"newest ({c['newest']}: {c['skipped'][0]['reason']}); best epoch {c['best_epoch']} "
          f"vs {c['result_json_best_epoch']} in result.json, so its metrics may differ from "
          f"train.py's" + (f" ({len(rows) - 1} more budget(s) likewise)" if len(rows) > 1 else "")
          + f"; recorded in {os.path.join(out['workdir'], 'eval.json')}")
  if allow_fallback:
    logging.warning("%s (allowed by --allow_fallback)", line)
    return out
  raise ckpt_lib.CheckpointError(f"{line}; pass --allow_fallback to accept it")


def swap_packed(workdir: str, staging: str) -> None:
  """Puts ``staging`` in place as ``workdir/packed`` and ``eval.json.tmp`` as ``eval.json``.

  Renames only: ``packed`` → ``packed.old``, ``staging`` → ``packed``, ``eval.json.tmp`` →
  ``eval.json``, then ``packed.old`` is removed. A kill at any point leaves the old or the new
  ``packed/`` (or the old one as ``packed.old``), never neither; :func:`recover_packed_swap`, run at
  the start of every evaluation, finishes or undoes an interrupted swap so that ``packed/`` and
  ``eval.json`` match.
  """
  final_dir, old = os.path.join(workdir, "packed"), os.path.join(workdir, "packed.old")
  if os.path.exists(final_dir):
    os.replace(final_dir, old)
  os.replace(staging, final_dir)
  os.replace(os.path.join(workdir, "eval.json.tmp"), os.path.join(workdir, "eval.json"))
  shutil.rmtree(old, ignore_errors=True)


def recover_packed_swap(workdir: str) -> None:
  """Completes or rolls back a :func:`swap_packed` that a kill interrupted.

  ``packed.old`` without ``packed/``: the new files never arrived, so the old ones go back (and the
  unpublished ``eval.json.tmp`` is dropped). ``packed.old`` beside ``packed/``: the new files are in
  place, so a waiting ``eval.json.tmp`` (written before the swap began) is published and the old
  files removed. Without ``packed.old`` nothing was interrupted and nothing changes.
  """
  final_dir, old = os.path.join(workdir, "packed"), os.path.join(workdir, "packed.old")
  tmp = os.path.join(workdir, "eval.json.tmp")
  if not os.path.exists(old):
    return
  if not os.path.exists(final_dir):
    logging.warning("%s: an interrupted eval.py left the previous packed files aside; restored", old)
    os.replace(old, final_dir)
    if os.path.exists(tmp):
      os.remove(tmp)
    return
  logging.warning("%s: finishing an interrupted eval.py (new packed files were in place)", workdir)
  if os.path.exists(tmp):
    os.replace(tmp, os.path.join(workdir, "eval.json"))
  shutil.rmtree(old, ignore_errors=True)


def _fmt_metric(row, k):
  v = row.get(k)
  if v is None:
    return "–"
  s = f"{v:.4f}"
  if row.get("sampled") and f"{k}_ci95" in row:
    s += f" ± {row[k + '_ci95']:.4f}"
  return s


def markdown_table(out: dict) -> str:
  """eval.py's Markdown table: one row per budget (metrics of the packed file's tables), then one
  row per budget × value dtype of post-training quantization against float32 (if evaluated)."""
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
           "| target | non-zeros | sparsity | values | packed bytes | layout | ratio vs full | "
           "Recall@20 | NDCG@20 | Recall@50 | NDCG@50 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    layouts = ",".join(sorted(set(r["packed_layouts"].values())))
    lines.append(f"| {r['target']} | {r['nonzeros']:,} | {r['sparsity']:.4f} | "
                 f"{r.get('value_dtype', 'float32')} | "
                 f"{r['packed_bytes']:,} | {layouts} | {r['compression_ratio']:.1f}x | "
                 f"{_fmt_metric(r, 'recall@20')} | {_fmt_metric(r, 'ndcg@20')} | "
                 f"{_fmt_metric(r, 'recall@50')} | {_fmt_metric(r, 'ndcg@50')} |")
  lines += _quantized_lines(rows)
  lines.append(f"\nfull float32 table: {rows[0]['full_table_bytes']:,} bytes")
  if "reference" in out:
    ref = out["reference"]
    lines.append(f"reference (full table, {ref['workdir']}): test Recall@20 {ref['recall@20']:.4f}; "
                 "kept: " + ", ".join(f"{r['target']} {r['recall@20_kept']:.1%}" for r in rows))
  if "recall@20" in out.get("most_popular", {}):
    pop = out["most_popular"]
    lines.append(f"most-popular ranking (the floor), same users: test Recall@20 "
                 f"{pop['recall@20']:.4f}, NDCG@20 {pop['ndcg@20']:.4f}")
  for r in rows:
    c = r.get("checkpoint", {})
    if c.get("fallback"):
      lines.append(f"{r['target']}: evaluated from FALLBACK checkpoint {c['number']} (newest "
                   f"{c['newest']} {c['skipped'][0]['reason']}); metrics may differ from train.py's")
  return "\n".join(lines)


def _quantized_lines(rows) -> list:
  """The post-training quantization table (packed bytes, Recall/NDCG@20 and their change against
  the float32 tables), or nothing when no row has ``quantized``."""
  if not any(r.get("quantized") for r in rows):
    return []
  lines = ["", "Post-training quantization of the same float32 tables (Δ = change against float32):",
           "", "| target | values | packed bytes | Recall@20 | ΔRecall@20 | NDCG@20 | ΔNDCG@20 |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    f32 = r.get("float32") or {}
    if "recall@20" in f32:
      f32_bytes = f32.get("packed_bytes")
      lines.append(f"| {r['target']} | float32 | {'–' if f32_bytes is None else f'{f32_bytes:,}'} "
                   f"| {f32['recall@20']:.4f} | – | {f32['ndcg@20']:.4f} | – |")
    for dt, q in (r.get("quantized") or {}).items():
      if "recall@20" not in q:  # eval.ks without 20: eval.json holds the Ks there are
        continue
      lines.append(f"| {r['target']} | {dt} | {q['packed_bytes']:,} | {q['recall@20']:.4f} | "
                   f"{q['delta_recall@20']:+.5f} | {q['ndcg@20']:.4f} | {q['delta_ndcg@20']:+.5f} |")
  return lines


def training_table(results: dict) -> str:
  """train.py's closing table: one row per retrained budget (test metrics of the selection)."""
  lines = ["| run | best epoch | test Recall@20 | test NDCG@20 | users | stage 1 s | train s |",
           "|---|---|---|---|---|---|---|"]
  for tag, r in results.items():
    t = r["test"]
    who = (f"{t['num_users_evaluated']}/{t['num_users_total']} sampled" if t.get("sampled") else
           f"all {t['num_users_evaluated']}")
    s1 = r.get("stage1_seconds")
    lines.append(f"| {tag} | {r['best_epoch']} | {_fmt_metric(t, 'recall@20')} | "
                 f"{_fmt_metric(t, 'ndcg@20')} | {who} | {'–' if s1 is None else f'{s1:.0f}'} | "
                 f"{r['train_seconds']:.0f} |")
  return "\n".join(lines)
