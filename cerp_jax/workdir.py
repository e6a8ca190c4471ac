"""The workdir of train.py and eval.py: its layout, its JSON files and the rules a run checks.

Layout::

  config.json                 the run's config (written once; a resume must match it)
  metrics.jsonl               one JSON object per epoch, evaluation or event (:class:`MetricWriter`)
  tensorboard/<run>/          the same scalars as TensorBoard event files
  prune/checkpoints/          stage-1 orbax checkpoints (state incl. snapshots and step-0 tables)
  prune/summary.json          budget → step, epoch, non-zeros
  retrain/<tag>/checkpoints/  stage-2 orbax checkpoints per budget (``sparsity_0.5000`` | ``full``)
  retrain/<tag>/result.json   selection history, best epoch, test metrics of the best checkpoint
  packed/<tag>.cerp           eval.py's packed tables (:mod:`cerp_jax.finalize`)
  eval.json                   eval.py's report

Rules: config values are validated before anything is written (:func:`validate_config`); a
workdir holds one config (:func:`check_config`; a few fields, such as the device mesh, may
change on resume); a retraining run may take stage 1 from another workdir whose stage-1 fields
match (:func:`check_prune_workdir`). In a multi-process run only process 0 writes.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any, Optional, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorboardX

from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import packing
from cerp_jax import pruning
from cerp_jax import sharding as shard_lib

# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------


def target_tag(target: Optional[float]) -> str:
  """``sparsity_0.5000`` (the original's folder name) or ``full`` for an unpruned run."""
  return "full" if target is None else f"sparsity_{target:.4f}"


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def prune_dir(workdir: str) -> str:
  """``workdir/prune``: stage 1's checkpoints and summary."""
  return os.path.join(workdir, "prune")


def prune_summary_path(workdir: str) -> str:
  return os.path.join(workdir, "prune", "summary.json")


def retrain_dir(workdir: str, target: Optional[float]) -> str:
  """``workdir/retrain/<tag>``: one budget's (or the full table's) checkpoints and result.json."""
  return os.path.join(workdir, "retrain", target_tag(target))


def result_path(workdir: str, target: Optional[float]) -> str:
  return os.path.join(retrain_dir(workdir, target), "result.json")


# --------------------------------------------------------------------------------------------------
# JSON files
# --------------------------------------------------------------------------------------------------


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def tmp_path(path: str, suffix: str = ".tmp") -> str:
  """A temporary name beside ``path``, unique to this process and call (``path.<pid>.<hex><suffix>``):
  processes writing the same file (sweep processes sharing a workdir) never share a temporary."""
  return f"{path}.{os.getpid()}.{secrets.token_hex(4)}{suffix}"


def write_json(path: str, obj: Any, sort_keys: bool = True) -> None:
  """Writes ``obj`` as indented JSON atomically (:func:`tmp_path`, then renamed); process 0 only.

  numpy integers, floats and arrays are written as numbers and lists.

  Raises:
    TypeError: a value JSON cannot hold.
  """
  if not shard_lib.is_primary():  # multi-process: process 0 writes
    return
  tmp = tmp_path(path)
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=sort_keys, default=_numpy_default)
  os.replace(tmp, path)


def _numpy_default(o):
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(type(o))


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


# --------------------------------------------------------------------------------------------------
# config.json: one config per workdir
# --------------------------------------------------------------------------------------------------

# Fields that may change when a run resumes.
_RESUME_IGNORED = ("stage", "progress_bar", "checkpoint_every_steps",
                   # where stage 1 lives; its stage-1 fields are checked by check_prune_workdir
                   "prune_workdir",
                   # devices: a run resumes on any mesh / device count (sharding.py)
                   "mesh_shape", "mesh_axes", "shard_embedding_rows_min", "distributed",
                   "coordinator_address", "num_processes", "process_id",
                   # eval-time packing (post-training quantization): training does not read it
                   "pack")
# what a finished run's record does not depend on: an imported record must match every other group
RECORD_IGNORED = tuple(g for g in _RESUME_IGNORED if g != "pack")

# Fields added after workdirs were written: absent from an older config.json, they read as these
# defaults (which keep the older behaviour), so those runs still resume.
_ADDED_FIELD_DEFAULTS = {"prune.threshold_weight_decay": -1.0, "prune.gk_ramp_steps": 0,
                         "retrain.lr_schedule": "constant", "retrain.lr_warmup_epochs": 0.0,
                         "retrain.lr_decay_epochs": 0.0, "retrain.lr_final_fraction": 0.0,
                         "eval.timing": "end", "eval.test_curve": False,
                         "retrain.ticket": "snapshot"}

_STAGE1_FIELDS = ("data", "model", "prune", "sampling", "seed", "target_sparsities")


def _flatten(d: dict, prefix: str = "") -> dict:
  """``{'a': {'b': 1}}`` → ``{'a.b': 1}``."""
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _config_diff(stored: dict, current: dict, selected) -> str:
  """``'a.b: old → new, …'`` (at most 8) over the flattened fields whose top-level group
  ``selected(group)`` accepts; ``''`` when they all match."""
  a, b = _flatten(stored), _flatten(current)
  for k, v in _ADDED_FIELD_DEFAULTS.items():
    for flat in (a, b):
      flat.setdefault(k, v)
  diff = sorted(k for k in set(a) | set(b) if selected(k.split(".")[0]) and a.get(k) != b.get(k))
  return ", ".join(f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in diff[:8])


def config_diff(stored: dict, config: ml_collections.ConfigDict,
                ignored: Sequence[str] = _RESUME_IGNORED) -> str:
  """``'a.b: old → new, …'`` over the fields of a stored ``config.json`` and ``config`` outside the
  top-level groups ``ignored`` (default: those a resumed run may change: stage, devices, eval-time
  packing …); ``''`` when they match."""
  current = json.loads(config.to_json_best_effort())
  return _config_diff(stored, current, lambda g: g not in ignored)


def check_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``config.json`` in a new workdir; refuses an existing one written by another config.

  Raises:
    ValueError: naming the differing fields (``retrain.max_epochs: 300 → 20``).
  """
  path = config_path(workdir)
  if os.path.exists(path):
    shown = config_diff(read_json(path), config)
    if shown:
      raise ValueError(f"{workdir} holds a run with a different config ({shown}); use a new "
                       "--workdir or the same config")
  elif shard_lib.is_primary():
    write_json(path, json.loads(config.to_json_best_effort()))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The ConfigDict train.py stored in ``workdir/config.json`` (lists back to tuples).

  Raises:
    FileNotFoundError: no config.json (not a train.py workdir).
  """
  path = config_path(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} a train.py workdir?")

  def fix(x):
    if isinstance(x, dict):
      return {k: fix(v) for k, v in x.items()}
    if isinstance(x, list):
      return tuple(fix(v) for v in x)
    return x

  return ml_collections.ConfigDict(fix(read_json(path)))


# --------------------------------------------------------------------------------------------------
# Stage 1 from another workdir (config.prune_workdir)
# --------------------------------------------------------------------------------------------------


def stage1_diff(stored: dict, config: ml_collections.ConfigDict) -> str:
  """The stage-1 fields (targets aside) in which ``config`` differs from a workdir's stored
  ``config.json`` dict, as ``'a.b: old → new, …'``; ``''`` when a stage 1 run with ``stored`` also
  serves ``config`` (for any subset of its targets)."""
  return _config_diff(stored, json.loads(config.to_json_best_effort()),
                      lambda g: g in _STAGE1_FIELDS and g != "target_sparsities")


def check_prune_workdir(config: ml_collections.ConfigDict, prune_workdir: str) -> None:
  """``config.prune_workdir``: retrain from another workdir's finished stage 1 (one stage 1, several
  retraining protocols, or several budgets). Everything stage 1 depends on must match that
  workdir's config; this config's target sparsities must be a subset of its targets.

  Raises:
    ValueError: not with stage 'retrain', no config.json there, a stage-1 field differs, or a target
      stage 1 did not run for.
  """
  if config.stage != "retrain":
    raise ValueError(f"config.prune_workdir={prune_workdir!r} needs --config.stage=retrain")
  path = config_path(prune_workdir)
  if not os.path.exists(path):
    raise ValueError(f"config.prune_workdir: {path} not found (not a train.py workdir)")
  stored = read_json(path)
  shown = stage1_diff(stored, config)
  if shown:
    raise ValueError(f"config.prune_workdir={prune_workdir!r} was pruned with other stage-1 "
                     f"settings ({shown})")
  missing = sorted(set(config.target_sparsities) - set(stored["target_sparsities"]))
  if missing:
    raise ValueError(f"config.prune_workdir={prune_workdir!r}: stage 1 ran for target sparsities "
                     f"{sorted(stored['target_sparsities'])}, not {missing}; retrain a subset of "
                     "them")


def stage1_targets(config: ml_collections.ConfigDict) -> list[float]:
  """The sorted target sparsities stage 1 ran with: this config's, or with ``config.prune_workdir``
  those of that workdir's config (a superset of this config's, :func:`check_prune_workdir`)."""
  if config.get("prune_workdir"):
    return sorted(read_json(config_path(config.prune_workdir))["target_sparsities"])
  return sorted(config.target_sparsities)


# --------------------------------------------------------------------------------------------------
# Config values
# --------------------------------------------------------------------------------------------------

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
    "retrain.lr_schedule": ("constant", "cosine"),
    "retrain.ticket": ("snapshot", "random"),
    "eval.timing": ("end", "start", "first_step"),
    "pack.value_dtype": tuple(packing.VALUE_DTYPES),
}
_POSITIVE = ("model.dim", "model.bucket_size", "prune.groups_per_step", "prune.num_negatives",
             "prune.steps_per_block", "prune.max_epochs", "retrain.groups_per_step",
             "retrain.num_negatives", "retrain.steps_per_block", "retrain.max_epochs",
             "eval.batch_size", "eval.every_epochs", "eval.patience", "checkpoint_every_steps",
             "sampling.triples_per_positive")


def validate_config(config: ml_collections.ConfigDict, num_items: Optional[int] = None) -> None:
  """Checks every value a typo could break, before anything is written (unknown *fields* are
  refused by ml_collections itself).

  Args:
    config: a train.py config.
    num_items: the dataset's item count, once known (K of ``eval.ks`` must not exceed it).

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
  _validate_eval(config, num_items)
  for key in ("retrain.lr_warmup_epochs", "retrain.lr_decay_epochs"):
    if key in flat and not (isinstance(flat[key], (int, float)) and flat[key] >= 0):
      raise ValueError(f"config.{key}={flat[key]!r}: expected a number of epochs ≥ 0")
  if "retrain.lr_final_fraction" in flat and not 0 <= flat["retrain.lr_final_fraction"] <= 1:
    raise ValueError(f"config.retrain.lr_final_fraction={flat['retrain.lr_final_fraction']!r}: "
                     "expected a fraction of retrain.lr in [0, 1]")
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


def _validate_eval(config: ml_collections.ConfigDict, num_items: Optional[int]) -> None:
  """``eval.ks`` and ``eval.selection_metric`` (:func:`validate_config`)."""
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
