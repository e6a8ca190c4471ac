"""Memory–accuracy frontier: every method at every byte budget, equal protocol, one command.

``python sweep.py --config=configs/sweep_gowalla_mf.py --workdir=DIR`` runs, for each method spec
of ``config.sweep.methods`` (``<method>[@<value dtype>]``, e.g. ``full@int8``: sized for and packed
in that value dtype after float32 training, :func:`cerp_jax.budget.parse_method`) and each budget
fraction of ``config.sweep.budgets`` (of the full float32 ``[N, d_ref]`` table), the settings
:mod:`cerp_jax.budget` solves for, through the same path as ``train.py`` + ``eval.py``:
:func:`cerp_jax.train.train_and_evaluate` (stage 1 for pruned methods, then retraining / training
with early stopping on validation) and :func:`cerp_jax.finalize.evaluate_workdir` (pack with
:mod:`cerp_jax.packing`, verify, evaluate on test).

Equal protocol: every run takes the base config's ``retrain`` schedule (batch, optimizer, L2, epoch
cap), its ``eval`` selection and early stopping, and is repeated for every seed of
``config.sweep.seeds`` and every learning rate of ``config.sweep.lrs`` (the same grid for every
method; the rate with the best mean validation selection metric is reported). Pruned methods (CERP,
PEP) run the base config's stage 1 first — once for all budgets that differ only in their target
(every PEP budget; CERP budgets of equal b), retraining each from that shared stage 1 — PEP without
CERP's −Σ tanh² regularizer (``prune.gamma_init = 0``, :data:`METHOD_PROTOCOL`). ``magnitude``
trains nothing: it prunes the reference full table run of the same seed and lr
(:func:`run_magnitude`), so its runs come after every other run.

This module runs the sweep and keeps the shared stage-1 bookkeeping; the tables and the plot are
:mod:`cerp_jax.sweep_report`'s. Workdir::

  plan.json, plan.md          the solver's settings per (method, budget)
  runs/<run>/                 a train.py workdir per (method, budget, seed, lr), plus eval.json and
                              sweep_run.json (the run's record; its presence marks the run finished);
                              references: ``full_reference_…`` (d_ref), ``full_reference_d64_…``
                              (``sweep.extra_reference_dims``); ``magnitude_…``: config.json,
                              packed/magnitude.cerp, eval.json, sweep_run.json (nothing trained)
  runs/<method>_stage1_…/     a shared stage 1 (:func:`run_shared_stage1`)
  most_popular.json           test metrics of the most-popular ranking (a floor)
  runs.csv, results.csv, results.md, frontier.png    :func:`cerp_jax.sweep_report.write_results`
  records.jsonl               every finished run's record and config, one per line
                              (:func:`export_records`)

Rerunning the same command skips finished runs and resumes unfinished ones from their checkpoints.
A sweep also continues in a new workdir (another machine, a lost one) from a ``records.jsonl`` kept
from an earlier one (``import_records``): the runs it holds count as finished and are reported.
Several processes may run the same sweep on one workdir (one per core): each run is taken under
a lock of its folder (``runs/<run>/.sweep_lock``), and a run, a shared stage 1 or a magnitude
run's reference that another process holds is skipped and left to it (logged).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from typing import NamedTuple, Optional, Sequence

from absl import logging
import ml_collections

from cerp_jax import budget as budget_lib
from cerp_jax import data as data_lib
from cerp_jax import embeddings as emb_lib
from cerp_jax import evaluation
from cerp_jax import finalize
from cerp_jax import magnitude as magnitude_lib
from cerp_jax import runlock
from cerp_jax import sweep_report
from cerp_jax import train as train_lib
from cerp_jax import workdir as workdir_lib

# Fixed per-method protocol on top of the solver's sizing (docs/frontier.md).
METHOD_PROTOCOL = {
    "pep": {"prune.gamma_init": 0.0},  # PEP has no regularizer; thresholds rise by the coupled decay
}
MAGNITUDE_MIN_PER_ROW = (0, 1, 2, 4, 8)  # config.sweep.magnitude_min_per_row's default
RECORDS_LOCK = ".records_lock"  # export_records' lock (sweep processes sharing the workdir)
RUN_LOCK = ".sweep_lock"  # a run folder's lock while a sweep process runs it (train.py's: .lock)


# --------------------------------------------------------------------------------------------------
# Plan
# --------------------------------------------------------------------------------------------------


def validate_sweep_config(config) -> None:
  """Checks ``config.sweep`` before anything runs.

  Raises:
    ValueError: unknown methods, empty or out-of-range budgets, seeds or learning rates, a bad
      ``magnitude_min_per_row`` (empty, or an m outside [0, reference_dim]) or
      ``extra_reference_dims`` (not distinct widths ≥ 1 other than reference_dim).
  """
  sc = config.sweep
  unknown = [m for m in sc.methods if not _is_spec(m)]
  if unknown or not sc.methods or len(set(sc.methods)) != len(sc.methods):
    raise ValueError(f"config.sweep.methods={tuple(sc.methods)}: expected distinct method specs "
                     f"<method>[@<value dtype>], method in {budget_lib.METHODS}, value dtype in "
                     f"{budget_lib.VALUE_DTYPES} (e.g. 'full@int8')")
  if not sc.budgets or any(not 0 < f <= 1 for f in sc.budgets) or len(set(sc.budgets)) != len(
      sc.budgets):
    raise ValueError(f"config.sweep.budgets={tuple(sc.budgets)}: expected distinct fractions in (0, 1]")
  if not sc.seeds or not sc.lrs or any(lr <= 0 for lr in sc.lrs):
    raise ValueError("config.sweep.seeds and config.sweep.lrs must be non-empty (lrs > 0)")
  for m in sc.methods:
    for k in METHOD_PROTOCOL.get(budget_lib.parse_method(m)[0], {}):
      _get(config, k)
  grid = magnitude_grid(config)
  if not grid or any(not isinstance(m, int) or isinstance(m, bool) or not 0 <= m <= sc.reference_dim
                     for m in grid):
    raise ValueError(f"config.sweep.magnitude_min_per_row={grid}: expected a non-empty tuple of "
                     f"integers m with 0 ≤ m ≤ d = reference_dim = {sc.reference_dim}")
  dims = extra_reference_dims(config)
  if any(not isinstance(d, int) or isinstance(d, bool) or d < 1 or d == sc.reference_dim
         for d in dims) or len(set(dims)) != len(dims):
    raise ValueError(f"config.sweep.extra_reference_dims={dims}: expected distinct integer widths "
                     f"d ≥ 1 other than reference_dim = {sc.reference_dim}")


def magnitude_grid(config) -> tuple:
  """``config.sweep.magnitude_min_per_row``: the values of m magnitude pruning tries on validation
  (:data:`MAGNITUDE_MIN_PER_ROW` when the field is absent)."""
  return tuple(config.sweep.get("magnitude_min_per_row", MAGNITUDE_MIN_PER_ROW))


def extra_reference_dims(config) -> tuple:
  """``config.sweep.extra_reference_dims``: widths of further full-table references (default ())."""
  return tuple(config.sweep.get("extra_reference_dims", ()))


def _is_spec(spec) -> bool:
  try:
    budget_lib.parse_method(spec)
  except ValueError:
    return False
  return True


def plan(config, num_entities: int) -> list[budget_lib.Setting]:
  """The solver's settings for every (method, budget) of ``config.sweep`` (+ the reference at d_ref
  when ``sweep.reference``, then one per ``sweep.extra_reference_dims``).

  Raises:
    BudgetError: a (method, budget) cannot land in the window.
  """
  sc = config.sweep
  settings = budget_lib.solve_all(sc.methods, sc.budgets, num_entities, sc.reference_dim,
                                  cerp_sparsity=sc.cerp_sparsity, window=tuple(sc.window))
  if sc.reference:
    settings.append(budget_lib.reference_setting(num_entities, sc.reference_dim))
  settings += [budget_lib.reference_setting(num_entities, sc.reference_dim, d)
               for d in extra_reference_dims(config)]
  return settings


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def _set(config, dotted: str, value):
  *parents, leaf = dotted.split(".")
  node = config
  for part in parents:
    node = node[part]
  if leaf not in node:
    raise KeyError(f"config has no field {dotted!r}")
  node[leaf] = value


def run_config(config, setting: budget_lib.Setting, seed: int, lr: float) -> ml_collections.ConfigDict:
  """The train.py config of one run: the base config without ``sweep``, the setting's sizing, the
  method's protocol (:data:`METHOD_PROTOCOL`), ``seed`` and ``retrain.lr = lr``."""
  raw = config.to_dict()
  raw.pop("sweep", None)
  rc = ml_collections.ConfigDict(raw)
  for k, v in setting.overrides.items():
    _set(rc, k, tuple(v) if isinstance(v, list) else v)
  for k, v in METHOD_PROTOCOL.get(setting.method, {}).items():
    _set(rc, k, v)
  rc.seed = int(seed)
  rc.retrain.lr = float(lr)
  rc.stage = "all"
  return rc


def run_name(setting: budget_lib.Setting, seed: int, lr: float) -> str:
  """Folder name of one run, e.g. ``cerp_b0.0250_seed3407_lr0.001`` (``full_reference_…`` at d_ref,
  ``full_reference_d64_…`` at another width; ``full@int8_b0.1000_…`` for a value dtype other than
  float32)."""
  tag = f"b{setting.budget_fraction:.4f}"
  if setting.reference:
    tag = ("reference" if setting.budget_fraction == 1.0 else
           f"reference_d{setting.overrides['model.dim']}")
  return f"{setting.spec}_{tag}_seed{seed}_lr{lr:g}"


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


def stage1_key(setting: budget_lib.Setting) -> str:
  """What a pruned setting's stage 1 depends on besides its target: method and sizing overrides."""
  rest = {k: v for k, v in setting.overrides.items()
          if k not in ("target_sparsities", "pack.value_dtype")}  # stage 1 packs nothing
  return json.dumps({"method": setting.method, **rest}, sort_keys=True, default=str)


def shared_stage1_groups(settings: Sequence[budget_lib.Setting]) -> list[list[int]]:
  """Indices of pruned settings (CERP, PEP) that differ only in their target sparsity, in groups of
  two or more: one stage 1 with all their targets serves every budget of the group (PEP: every
  budget; CERP: budgets sized to the same b)."""
  groups: dict = {}
  for i, st in enumerate(settings):
    if emb_lib.prunes(st.method) and not st.reference:
      groups.setdefault(stage1_key(st), []).append(i)
  return [g for g in groups.values() if len(g) > 1]


def _target(setting: budget_lib.Setting) -> float:
  (t,) = setting.overrides["target_sparsities"]
  return float(t)


def _stage1_config(config, setting: budget_lib.Setting, seed: int, targets) -> ml_collections.ConfigDict:
  """The config of a shared stage 1: the setting's run config at the base config's retraining rate
  (stage 1 does not depend on it; a changed lr grid must not orphan a finished stage 1)."""
  rc = run_config(config, setting, seed, config.retrain.lr)
  rc.target_sparsities = tuple(sorted(float(t) for t in targets))
  rc.stage = "prune"
  return rc


def _stage1_matches(rc, sdir: str) -> bool:
  """Whether ``sdir`` holds a stage 1 with ``rc``'s stage-1 fields (targets aside)."""
  path = os.path.join(sdir, "config.json")
  if not os.path.exists(path):
    return False
  return not workdir_lib.stage1_diff(workdir_lib.read_json(path), rc)


def find_shared_stage1(config, setting: budget_lib.Setting, seed: int, workdir: str,
                       targets) -> Optional[str]:
  """A finished shared stage 1 in ``workdir/runs`` with ``setting``'s stage-1 fields whose targets
  include every one of ``targets`` (e.g. after budgets were removed or reordered), else None."""
  key = hashlib.sha1(stage1_key(setting).encode()).hexdigest()[:8]
  prefix = f"{setting.method}_stage1_{key}_"
  rc = _stage1_config(config, setting, seed, targets)
  runs_dir = os.path.join(workdir, "runs")
  for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else ():
    sdir = os.path.join(runs_dir, name)
    if not (name.startswith(prefix) and name.endswith(f"_seed{seed}")):
      continue
    summary = os.path.join(sdir, "prune", "summary.json")
    if os.path.exists(summary) and _stage1_matches(rc, sdir):
      done = {float(t["target_sparsity"]) for t in workdir_lib.read_json(summary)["targets"]}
      if set(float(t) for t in targets) <= done:
        return sdir
  return None


def run_shared_stage1(config, members: Sequence[budget_lib.Setting], seed: int, workdir: str) -> str:
  """Runs (or resumes, or finds finished) one stage 1 for ``members`` with all their targets, in
  ``workdir/runs/<method>_stage1_<key hash>_<targets hash>_seed<seed>``; returns that folder.

  Each budget's snapshot is the one a run with that target alone takes (the first step at or under
  its budget), except for the authors' one-budget-per-step rule: when a single step crosses two
  budgets, the sparser one is taken at the next step that is still under it.
  """
  targets = sorted({_target(m) for m in members})
  found = find_shared_stage1(config, members[0], seed, workdir, targets)
  if found:
    logging.info("sweep: shared stage 1 %s finished before (targets ⊇ %s)", found, targets)
    return found
  key = hashlib.sha1(stage1_key(members[0]).encode()).hexdigest()[:8]
  tkey = hashlib.sha1(json.dumps(targets).encode()).hexdigest()[:6]
  sdir = os.path.join(workdir, "runs", f"{members[0].method}_stage1_{key}_{tkey}_seed{seed}")
  rc = _stage1_config(config, members[0], seed, targets)
  logging.info("sweep: shared stage 1 of %s at targets %s in %s", members[0].method, targets, sdir)
  train_lib.train_and_evaluate(rc, sdir)
  return sdir


def _group_stage1(config, settings: Sequence[budget_lib.Setting], group: Sequence[int],
                  setting: budget_lib.Setting, seed: int, workdir: str):
  """The shared stage-1 folder of ``setting``'s group at ``seed`` (run, resumed or found; None when
  only ``setting`` is still open and no finished stage 1 serves it), or :class:`_Busy` when
  another process runs it: then this process leaves every budget of the group to that one (none
  starts a stage 1 of its own), for the rest of its run."""
  sc = config.sweep
  # the budgets of the group still to retrain (not finished, no stage 1 of their own)
  members = [settings[j] for j in group
             if any(_open_without_own_stage1(workdir, settings[j], seed, r) for r in sc.lrs)]
  if len(members) <= 1:
    return find_shared_stage1(config, setting, seed, workdir, [_target(setting)])
  try:
    return run_shared_stage1(config, members, seed, workdir)
  except runlock.WorkdirBusyError as e:
    return _Busy(f"{e.holder or 'another process'}, running its shared stage 1")


class _Busy(NamedTuple):
  """A shared stage 1 another process runs: every budget of its group is left to that process."""
  holder: str


def _open_without_own_stage1(workdir: str, setting: budget_lib.Setting, seed: int, lr: float) -> bool:
  """The run is not finished and has not started a stage 1 of its own (which it then resumes)."""
  rdir = os.path.join(workdir, "runs", run_name(setting, seed, lr))
  return not (os.path.exists(os.path.join(rdir, "sweep_run.json")) or
              os.path.exists(os.path.join(rdir, "prune")))


def _prune_seconds(prune_dir: str, setting: budget_lib.Setting) -> float:
  """Stage-1 seconds to this setting's snapshot: the whole stage 1 for its own run; for a shared
  stage 1, its seconds pro rata to the step of this budget's snapshot (steps cost the same)."""
  summary = workdir_lib.read_json(os.path.join(prune_dir, "prune", "summary.json"))
  (target,) = setting.overrides["target_sparsities"]
  rec = next(t for t in summary["targets"] if t["target_sparsity"] == float(target))
  if len(summary["targets"]) == 1 or rec["step"] is None or not summary["final_step"]:
    return float(summary["seconds"])
  return float(summary["seconds"]) * rec["step"] / summary["final_step"]


def finished_record(config, setting: budget_lib.Setting, seed: int, lr: float,
                    workdir: str) -> Optional[dict]:
  """The run's ``sweep_run.json`` if it finished, else None.

  Raises:
    ValueError: the folder holds a finished run with other settings or another protocol (a
      magnitude run: also another ``magnitude_min_per_row`` grid).
  """
  rdir = os.path.join(workdir, "runs", run_name(setting, seed, lr))
  path = os.path.join(rdir, "sweep_run.json")
  if not os.path.exists(path):
    return None
  rec = workdir_lib.read_json(path)
  why = _record_mismatch(config, setting, rec)
  if why:
    raise ValueError(f"{rdir} holds a finished run with {why}; remove it or use another --workdir")
  workdir_lib.check_config(run_config(config, setting, seed, lr), rdir)
  return rec


def _record_mismatch(config, setting: budget_lib.Setting, rec: dict) -> str:
  """Why a finished run's record is not ``setting``'s under ``config`` (``''`` when it is): other
  settings (``'settings model.dim: 3 → 4'``, recorded → planned) or, for magnitude, another m grid."""
  have, want = rec["setting"]["overrides"], setting.to_dict()["overrides"]
  if have != want:
    keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    return "settings " + ", ".join(f"{k}: {have.get(k)!r} → {want.get(k)!r}" for k in keys)
  grid = list(magnitude_grid(config))
  if setting.method == "magnitude" and rec.get("min_per_row_grid") != grid:
    return f"m chosen among {rec.get('min_per_row_grid')}, not {grid} (magnitude_min_per_row)"
  return ""


def _evaluated_fields(config, setting: budget_lib.Setting, rdir: str, train_result: dict,
                      prune_seconds: float, t0: float, shared_s: float) -> dict:
  """The record fields of a trained run: packs and evaluates ``rdir`` on test (eval.py's path).

  Args:
    config: the sweep config (``config.sweep.window``).
    setting: the run's setting.
    rdir: the run's workdir, trained.
    train_result: the run's entry of :func:`cerp_jax.train.train_and_evaluate`'s results.
    prune_seconds: stage-1 seconds charged to this run (:func:`_prune_seconds`).
    t0: ``time.perf_counter()`` when the run started; ``shared_s``: seconds of a shared stage 1
      that ran before ``t0`` (added to ``wall_seconds``).
  """
  out = finalize.evaluate_workdir(rdir)
  (row,) = out["results"]
  packed = int(row["packed_bytes"])
  lo, hi = config.sweep.window
  fill = packed / setting.budget_bytes
  return dict(
      status="ok", packed_bytes=packed, fill=fill,
      within_window=bool(setting.reference or lo <= fill <= hi),
      nonzeros=int(row["nonzeros"]), layouts=row["packed_layouts"],
      valid_selection=train_result["selection"]["value"],
      selection=train_result["selection"], best_epoch=train_result["best_epoch"],
      epochs=train_result["epochs"], prune_seconds=prune_seconds,
      retrain_seconds=float(train_result["train_seconds"]),
      train_seconds=prune_seconds + float(train_result["train_seconds"]),
      wall_seconds=time.perf_counter() - t0 + shared_s,
      num_users_evaluated=row["num_users_evaluated"], sampled=row["sampled"],
      float32=row.get("float32"), quantized=row.get("quantized"),
      **{k: v for k, v in row.items() if "@" in k})


def run_one(config, setting: budget_lib.Setting, seed: int, lr: float, workdir: str,
            prune_workdir: Optional[str] = None) -> dict:
  """Trains, packs and evaluates one (method, budget, seed, lr) in ``workdir/runs/<run>``.

  Skips the run when its ``sweep_run.json`` exists (finished); an unfinished run resumes from its
  checkpoints (train.py's resume). With ``prune_workdir`` (a shared stage 1,
  :func:`run_shared_stage1`) the run only retrains, from that folder's snapshot of its budget.

  Returns:
    the run's record (also ``sweep_run.json``): the setting, measured ``packed_bytes``, ``fill`` =
    packed / budget bytes, ``within_window``, test metrics (``recall@20`` …), ``valid_selection``
    (best validation value of the selection metric), ``best_epoch``, ``prune_seconds`` (stage 1),
    ``retrain_seconds`` (training steps of stage 2, evaluations excluded), ``train_seconds`` (their
    sum), ``status`` ('ok' | 'not_reached': a pruned method whose stage 1 never met the budget).

  Raises:
    ValueError: the run folder holds a finished run with other settings or another protocol (its
      ``config.json`` differs from this run's config).
    runlock.WorkdirBusyError: another process is running this run (its sweep run lock, or
      train.py's lock, is held).
  """
  name = run_name(setting, seed, lr)
  rdir = os.path.join(workdir, "runs", name)
  rc = run_config(config, setting, seed, lr)
  if prune_workdir:
    rc.stage = "retrain"
    rc.prune_workdir = prune_workdir
  rec = finished_record(config, setting, seed, lr, workdir)
  if rec is not None:
    logging.info("sweep: %s finished before, skipped", name)
    return rec
  os.makedirs(rdir, exist_ok=True)
  with runlock.hold(rdir, name=RUN_LOCK):
    return _run_one_locked(config, setting, seed, lr, workdir, rc, prune_workdir)


def _run_one_locked(config, setting: budget_lib.Setting, seed: int, lr: float, workdir: str,
                    rc: ml_collections.ConfigDict, prune_workdir: Optional[str]) -> dict:
  """:func:`run_one` once its run lock is held: trains, packs, evaluates, writes the record."""
  name = run_name(setting, seed, lr)
  rdir = os.path.join(workdir, "runs", name)
  record_path = os.path.join(rdir, "sweep_run.json")
  rec = finished_record(config, setting, seed, lr, workdir)  # finished while we waited to look
  if rec is not None:
    logging.info("sweep: %s finished by another process, skipped", name)
    return rec
  t0 = time.perf_counter()
  logging.info("sweep: running %s (%s; predicted %s bytes of a %s-byte budget)", name,
               setting.summary, f"{setting.predicted_bytes:,}", f"{setting.budget_bytes:,}")
  try:
    results = train_lib.train_and_evaluate(rc, rdir)
  except train_lib.NoTargetReachedError as e:  # recorded as 'not_reached'; the sweep goes on
    logging.warning("sweep: %s: %s", name, e)
    results = {}
  rec = {"name": name, "method": setting.method, "value_dtype": setting.value_dtype,
         "budget_fraction": setting.budget_fraction,
         "budget_bytes": setting.budget_bytes, "reference": setting.reference, "seed": int(seed),
         "lr": float(lr), "setting": setting.to_dict(), "summary": setting.summary}
  prune_seconds = 0.0
  if emb_lib.prunes(setting.method) and os.path.exists(
      os.path.join(prune_workdir or rdir, "prune", "summary.json")):
    prune_seconds = _prune_seconds(prune_workdir or rdir, setting)
  shared_s = prune_seconds if prune_workdir else 0.0  # a shared stage 1 ran before t0
  if not results:
    rec.update(status="not_reached", packed_bytes=None, fill=None, within_window=False,
               prune_seconds=prune_seconds, train_seconds=prune_seconds,
               wall_seconds=time.perf_counter() - t0 + shared_s)
    logging.warning("sweep: %s: stage 1 never reached the budget; no retraining, no result", name)
    workdir_lib.write_json(record_path, rec)
    export_records(workdir)
    return rec
  (train_result,) = results.values()
  rec.update(_evaluated_fields(config, setting, rdir, train_result, prune_seconds, t0, shared_s))
  level = logging.INFO if rec["within_window"] else logging.WARNING
  logging.log(level, "sweep: %s: %s packed bytes = %.2f%% of the budget%s; test recall@20 %.4f "
              "ndcg@20 %.4f", name, f"{rec['packed_bytes']:,}", 100 * rec["fill"],
              "" if rec["within_window"] else " — OUTSIDE the budget window", rec["recall@20"],
              rec["ndcg@20"])
  workdir_lib.write_json(record_path, rec)
  export_records(workdir)
  return rec


def reference_record(config, reference: budget_lib.Setting, seed: int, lr: float, workdir: str,
                     name: str) -> dict:
  """The finished reference run (``reference``, ``seed``, ``lr``) a magnitude run prunes.

  Raises:
    ValueError: one line naming the run ``name`` and its missing or unusable reference.
  """
  ref = run_name(reference, seed, lr)
  rec = finished_record(config, reference, seed, lr, workdir)
  if rec is None or rec.get("status") != "ok":
    why = "has not finished" if rec is None else f"has status {rec.get('status')!r}"
    raise ValueError(f"{name}: its reference run {ref} (the full table at d="
                     f"{reference.overrides['model.dim']}, seed {seed}, lr {lr:g}) {why} in "
                     f"{os.path.join(workdir, 'runs')}; set config.sweep.reference = True (the "
                     "sweep then trains it first) or run it there")
  if not os.path.exists(workdir_lib.result_path(os.path.join(workdir, "runs", ref), None)):
    raise ValueError(f"{name}: its reference run {ref} is finished in {os.path.join(workdir, 'runs')} "
                     f"(imported from {rec.get('imported_from')}) but its trained table is not there; "
                     "remove that run's folder and rerun without the record (it then trains here)")
  return rec


def run_magnitude(config, setting: budget_lib.Setting, reference: budget_lib.Setting, seed: int,
                  lr: float, workdir: str) -> dict:
  """The ``magnitude`` method at one budget: prunes the finished reference run of the same seed
  and lr to ``setting.nonzeros`` entries, m chosen on validation from ``sweep.magnitude_min_per_row``
  (:func:`cerp_jax.magnitude.prune_workdir`); trains nothing.

  Skips the run when its ``sweep_run.json`` exists. ``workdir/runs/<run>`` gets ``config.json``
  (:func:`run_config`), ``packed/magnitude.cerp``, ``eval.json`` and ``sweep_run.json``.

  Returns:
    the run's record, as :func:`run_one`'s (``valid_selection``: the chosen m's validation score;
    ``train_seconds``: the reference's training plus the pruning and selection here), plus
    ``reference_run``, ``min_per_row`` (the chosen m), ``min_per_row_grid``,
    ``min_per_row_scores`` (validation score per m tried), ``empty_rows``,
    ``empty_user_rows``, ``empty_item_rows`` (of the chosen mask).

  Raises:
    ValueError: the reference run has not finished (:func:`reference_record`), or the run folder
      holds another finished run (:func:`finished_record`).
    runlock.WorkdirBusyError: another sweep process is running this run.
  """
  name = run_name(setting, seed, lr)
  rec = finished_record(config, setting, seed, lr, workdir)
  if rec is not None:
    logging.info("sweep: %s finished before, skipped", name)
    return rec
  ref = reference_record(config, reference, seed, lr, workdir, name)
  rdir = os.path.join(workdir, "runs", name)
  os.makedirs(rdir, exist_ok=True)
  with runlock.hold(rdir, name=RUN_LOCK):
    rec = finished_record(config, setting, seed, lr, workdir)
    if rec is not None:
      logging.info("sweep: %s finished by another process, skipped", name)
      return rec
    return _run_magnitude_locked(config, setting, seed, lr, workdir, ref)


def _run_magnitude_locked(config, setting: budget_lib.Setting, seed: int, lr: float,
                          workdir: str, ref: dict) -> dict:
  """:func:`run_magnitude` once its run lock is held: prunes, packs, evaluates, writes."""
  name = run_name(setting, seed, lr)
  t0 = time.perf_counter()
  rdir = os.path.join(workdir, "runs", name)
  workdir_lib.check_config(run_config(config, setting, seed, lr), rdir)
  grid = magnitude_grid(config)
  logging.info("sweep: running %s (%s, m ∈ %s, from %s)", name, setting.summary, grid, ref["name"])
  out = magnitude_lib.prune_workdir(os.path.join(workdir, "runs", ref["name"]), rdir,
                                    setting.nonzeros, grid, setting.value_dtype)
  rec = _magnitude_record(config, setting, seed, lr, ref, out, time.perf_counter() - t0)
  logging.info("sweep: %s: m=%d, %s packed bytes = %.2f%% of the budget; test recall@20 %.4f "
               "ndcg@20 %.4f", name, rec["min_per_row"], f"{rec['packed_bytes']:,}",
               100 * rec["fill"], rec["recall@20"], rec["ndcg@20"])
  workdir_lib.write_json(os.path.join(rdir, "sweep_run.json"), rec)
  export_records(workdir)
  return rec


def _magnitude_record(config, setting: budget_lib.Setting, seed: int, lr: float, ref: dict,
                      out: dict, seconds: float) -> dict:
  """sweep_run.json of a magnitude run from :func:`cerp_jax.magnitude.prune_workdir`'s ``out``."""
  (row,) = out["results"]
  info = out["magnitude"]
  packed = int(row["packed_bytes"])
  lo, hi = config.sweep.window
  fill = packed / setting.budget_bytes
  return {
      "name": run_name(setting, seed, lr), "method": setting.method,
      "value_dtype": setting.value_dtype, "budget_fraction": setting.budget_fraction,
      "budget_bytes": setting.budget_bytes, "reference": False, "seed": int(seed),
      "lr": float(lr), "setting": setting.to_dict(), "summary": setting.summary, "status": "ok",
      "packed_bytes": packed, "fill": fill, "within_window": bool(lo <= fill <= hi),
      "nonzeros": int(row["nonzeros"]), "layouts": row["packed_layouts"],
      "valid_selection": info["valid_selection"],
      "selection": {"split": config.eval.selection_split, "metric": config.eval.selection_metric,
                    "value": info["valid_selection"]},
      "best_epoch": ref.get("best_epoch"), "epochs": 0, "prune_seconds": 0.0,
      "retrain_seconds": 0.0, "train_seconds": float(ref["train_seconds"]) + seconds,
      "wall_seconds": seconds, "num_users_evaluated": row["num_users_evaluated"],
      "sampled": row["sampled"], "reference_run": ref["name"],
      "min_per_row": info["min_per_row"], "min_per_row_grid": info["grid"],
      "min_per_row_scores": info["scores"], "empty_rows": info["empty_rows"],
      "empty_user_rows": info["empty_user_rows"], "empty_item_rows": info["empty_item_rows"],
      **{k: v for k, v in row.items() if "@" in k}}


# --------------------------------------------------------------------------------------------------
# Records: a sweep that outlives its workdir
# --------------------------------------------------------------------------------------------------

RECORDS_FILE = "records.jsonl"


def export_records(workdir: str) -> str:
  """Writes ``workdir/records.jsonl``: one line per finished run in ``workdir/runs`` (every run with
  a ``sweep_run.json``, whichever command finished it), its record plus ``config`` (its
  ``config.json``), in name order, ASCII. Rewritten after every finished run and report; ≈ 6 KB
  per run and no tables: kept beside the results, it lets :func:`import_records` continue the
  sweep elsewhere.

  Returns:
    the file's path (written atomically, listed and written under ``workdir/.records_lock``: of
    sweep processes sharing the workdir, the last to write lists every run finished by then).
  """
  fd = os.open(os.path.join(workdir, RECORDS_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)  # list and write as one step: a later list is never overwritten
    return _write_records(workdir)
  finally:
    os.close(fd)


def _write_records(workdir: str) -> str:
  """:func:`export_records` under its lock."""
  runs_dir = os.path.join(workdir, "runs")
  lines = []
  for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else ():
    rdir = os.path.join(runs_dir, name)
    if not os.path.exists(os.path.join(rdir, "sweep_run.json")):
      continue
    rec = workdir_lib.read_json(os.path.join(rdir, "sweep_run.json"))
    rec["config"] = workdir_lib.read_json(workdir_lib.config_path(rdir))
    lines.append(json.dumps(rec, sort_keys=True))
  path = os.path.join(workdir, RECORDS_FILE)
  tmp = workdir_lib.tmp_path(path)
  with open(tmp, "w", encoding="ascii") as f:
    f.write("".join(line + "\n" for line in lines))
  os.replace(tmp, path)
  return path


def _read_records(path: str) -> list[tuple[str, dict]]:
  """``(where, record)`` per non-blank line of a records file (``where`` = ``path:line``).

  Raises:
    ValueError: an unreadable file, or a line that is not a JSON object with a string ``name``, a
      ``setting`` with ``overrides``, a ``status`` and a ``config`` object, or a run named twice.
  """
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"--import_records={path}: cannot read it as a text file "
                     f"({getattr(e, 'strerror', None) or e})") from e
  out, seen = [], {}
  for i, line in enumerate(text.split("\n"), 1):
    if not line.strip():
      continue
    where = f"{path}:{i}"
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{where}: not a JSON record ({e.msg}, column {e.colno})") from e
    if not (isinstance(rec, dict) and isinstance(rec.get("name"), str) and "status" in rec and
            isinstance(rec.get("setting"), dict) and
            isinstance(rec["setting"].get("overrides"), dict) and
            isinstance(rec.get("config"), dict)):
      raise ValueError(f"{where}: not a sweep run record (expected a JSON object with name, setting "
                       f"with overrides, status and config: a line of a sweep's {RECORDS_FILE})")
    if rec["name"] in seen:
      raise ValueError(f"{where}: run {rec['name']} again (first at line {seen[rec['name']]})")
    seen[rec["name"]] = i
    out.append((where, rec))
  return out


def import_records(path: str, config, jobs, workdir: str) -> list[str]:
  """Marks the runs of ``jobs`` that the records file ``path`` (:func:`export_records`) holds as
  finished in ``workdir``: they are not trained again and are reported with their recorded metrics.

  Every line is checked first; then each planned run found in the file gets
  ``runs/<name>/config.json`` and ``sweep_run.json`` (the record with ``imported_from =
  'path:line'``, ``within_window`` recomputed for this config's window), unless it finished in
  ``workdir`` already (its own record wins). Skipped, and logged: records of runs outside the plan
  (other methods, budgets, seeds), and a reference run whose magnitude runs are still to do here
  (a record holds no trained table to prune: the reference trains here).

  Args:
    path: a records file.
    config: the sweep config; jobs: the planned ``(setting, seed, lr)`` triples.
    workdir: the sweep's directory.

  Returns:
    the names of the runs imported.

  Raises:
    ValueError: ``path:line``: not a record, a run named twice, or a planned run recorded with other
      settings, another magnitude m grid or another config (the differing fields named), or whose
      folder here holds another config.
  """
  planned = {run_name(s, seed, lr): (s, seed, lr) for s, seed, lr in jobs}
  records = _read_records(path)
  held = {rec["name"] for _, rec in records}
  todo = []
  for where, rec in records:
    if rec["name"] not in planned:
      continue
    s, seed, lr = planned[rec["name"]]
    rc = run_config(config, s, seed, lr)
    rdir = os.path.join(workdir, "runs", rec["name"])
    why = _record_mismatch(config, s, rec)
    diff = workdir_lib.config_diff(rec["config"], rc, workdir_lib.RECORD_IGNORED)
    here = workdir_lib.config_path(rdir)
    diff_here = workdir_lib.config_diff(workdir_lib.read_json(here), rc) if os.path.exists(here) else ""
    if why or diff or diff_here:
      raise ValueError(f"{where}: run {rec['name']} " + (
          f"was recorded with {why}" if why else
          f"was trained with another config ({diff})" if diff else
          f"has a folder in {workdir} with another config ({diff_here})"))
    if s.reference and _magnitude_pending(planned, rec["name"], held, workdir):
      logging.warning("sweep: %s: not imported: a magnitude run still to do prunes its trained "
                      "table, which a record does not hold; it trains here", where)
      continue
    todo.append((where, rec))
  imported = []
  for where, rec in todo:
    s, seed, lr = planned[rec["name"]]
    rdir = os.path.join(workdir, "runs", rec["name"])
    if os.path.exists(os.path.join(rdir, "sweep_run.json")):
      continue
    os.makedirs(rdir, exist_ok=True)
    workdir_lib.check_config(run_config(config, s, seed, lr), rdir)
    rec = {k: v for k, v in rec.items() if k != "config"}
    lo, hi = config.sweep.window
    if rec.get("fill") is not None:
      rec["within_window"] = bool(s.reference or lo <= rec["fill"] <= hi)
    before = rec.get("imported_from")
    rec["imported_from"] = where + (f" (before: {before})" if before else "")
    workdir_lib.write_json(os.path.join(rdir, "sweep_run.json"), rec)
    imported.append(rec["name"])
  level = logging.WARNING if records and not todo else logging.INFO
  logging.log(level, "sweep: %s: %d of its %d records imported (%d outside this plan, %d finished "
              "here already): %s", path, len(imported), len(records),
              sum(r["name"] not in planned for _, r in records), len(todo) - len(imported), imported)
  return imported


def _magnitude_pending(planned: dict, ref_name: str, held: set, workdir: str) -> bool:
  """Whether ``ref_name`` is the d_ref reference of a planned magnitude run (same seed and lr) that is
  neither in the records file (``held``) nor finished in ``workdir``."""
  ref, seed, lr = planned[ref_name]
  if ref.budget_fraction != 1.0:  # an extra reference (another width): no magnitude run prunes it
    return False
  return any(s.method == "magnitude" and (sd, r) == (seed, lr) and name not in held and
             not os.path.exists(os.path.join(workdir, "runs", name, "sweep_run.json"))
             for name, (s, sd, r) in planned.items())


# --------------------------------------------------------------------------------------------------
# The most-popular floor
# --------------------------------------------------------------------------------------------------


def most_popular(config, data: data_lib.Interactions, workdir: str) -> dict:
  """Test metrics of ranking items by training popularity (cached in ``most_popular.json``)."""
  path = os.path.join(workdir, "most_popular.json")
  if os.path.exists(path):
    return workdir_lib.read_json(path)
  ec = config.eval
  ev = evaluation.Evaluator(data, "test", ec.ks, ec.batch_size, user_sample=ec.test_user_sample,
                            seed=ec.sample_seed)
  res = evaluation.most_popular_metrics(ev, data.train)
  out = {k: v for k, v in res.items() if "@" in k or k in ("num_users_evaluated", "sampled")}
  workdir_lib.write_json(path, out)
  return out


# --------------------------------------------------------------------------------------------------
# Entry
# --------------------------------------------------------------------------------------------------


def run_sweep(config, workdir: Optional[str], solve_only: bool = False,
              report_only: bool = False, import_from: Optional[str] = None) -> dict:
  """Solves the budgets, runs every (method, budget, seed, lr) not finished yet, writes the results.

  Args:
    config: a sweep config (a train config with a ``sweep`` field; ``configs/sweep_*.py``).
    workdir: the sweep's directory (optional with ``solve_only``).
    solve_only: only solve and print the settings (and write ``plan.json``/``plan.md`` if workdir).
    report_only: train nothing; write the outputs from the runs finished so far (the others are
      '–' in the tables and missing from the plot), e.g. while the sweep is still running elsewhere.
    import_from: a ``records.jsonl`` of an earlier workdir: its planned runs count as finished
      (:func:`import_records`), before anything runs.

  Several processes may run the same sweep on one workdir: a run (or a shared stage 1, or the
  reference a magnitude run prunes) another process holds is skipped and left to it; the report
  then holds every run finished in the workdir when this process ends, and when none has finished
  yet there is no report (a warning, ``records`` empty).

  Returns:
    ``{'plan': [settings], 'records': [...], 'rows': [...], 'most_popular': {...}}``.

  Raises:
    BudgetError: a (method, budget) cannot land in the budget window (before anything trains).
    ValueError: a bad sweep config, a run folder holding another setting, or no run finished
      (none skipped for another process either).
  """
  validate_sweep_config(config)
  data = data_lib.load_interactions(config)
  settings = plan(config, data.num_entities)
  table = budget_lib.markdown_table(settings)
  logging.info("sweep: N=%d, %d settings%s", data.num_entities, len(settings),
               "" if solve_only else ":\n" + table)
  out = {"plan": [s.to_dict() for s in settings]}
  sc = config.sweep
  # magnitude prunes the trained reference: its runs come last
  ordered = sorted(settings, key=lambda st: st.method == "magnitude")
  jobs = [(s, seed, lr) for s in ordered for seed in sc.seeds for lr in sc.lrs]
  if import_from:
    if solve_only or not workdir:
      raise ValueError("--import_records needs a --workdir to import into (not with --solve_only)")
    import_records(import_from, config, jobs, workdir)  # every line checked before it writes
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    workdir_lib.write_json(os.path.join(workdir, "plan.json"), {"num_entities": data.num_entities,
                                                     "settings": out["plan"]})
    with open(os.path.join(workdir, "plan.md"), "w", encoding="utf-8") as f:
      f.write(table + "\n")
  if solve_only:
    print(table)
    return out
  if not workdir:
    raise ValueError("a sweep needs a workdir")
  reference = budget_lib.reference_setting(data.num_entities, sc.reference_dim)
  group_of = {i: g for g in shared_stage1_groups(settings) for i in g}
  shared: dict = {}  # (first index of the group, seed) → shared stage-1 folder (or busy error)
  records, busy = [], []
  for i, (s, seed, lr) in enumerate(jobs):
    if report_only:
      rec = finished_record(config, s, seed, lr, workdir)
      if rec is not None:
        records.append(rec)
      else:
        logging.info("sweep: %s not finished yet; left out of the report", run_name(s, seed, lr))
      continue
    logging.info("sweep: run %d/%d", i + 1, len(jobs))
    name = run_name(s, seed, lr)
    try:
      if s.method == "magnitude":
        if run_name(reference, seed, lr) in busy:  # its reference trains in another process
          raise runlock.WorkdirBusyError("", f"the process training {run_name(reference, seed, lr)}")
        records.append(run_magnitude(config, s, reference, seed, lr, workdir))
        continue
      prune_dir = None
      idx = settings.index(s)
      if idx in group_of and _open_without_own_stage1(workdir, s, seed, lr):
        g = group_of[idx]
        if (g[0], seed) not in shared:
          shared[(g[0], seed)] = _group_stage1(config, settings, g, s, seed, workdir)
        prune_dir = shared[(g[0], seed)]
        if isinstance(prune_dir, _Busy):  # its shared stage 1 runs in another process
          raise runlock.WorkdirBusyError("", prune_dir.holder)
      records.append(run_one(config, s, seed, lr, workdir, prune_workdir=prune_dir))
    except runlock.WorkdirBusyError as e:
      busy.append(name)
      logging.warning("sweep: %s skipped, left to %s", name, e.holder or e)
  if busy:  # the others may have finished runs since this process passed them: report them all
    logging.warning("sweep: %d run(s) left to other processes: %s; rerun this command (or "
                    "--report_only) after they end for the whole table", len(busy), busy)
    records = [r for r in (finished_record(config, s, seed, lr, workdir) for s, seed, lr in jobs)
               if r is not None]
    if not records:
      logging.warning("sweep: no finished run to report yet")
      out.update(records=[], rows=[], most_popular=None)
      return out
  if not records:
    raise ValueError(f"{workdir}: no finished run to report yet")
  pop = most_popular(config, data, workdir)
  export_records(workdir)  # before the report: a report that fails must not lose the records
  rows, md = sweep_report.write_results(workdir, records, config, data.num_entities, pop)
  outside = [r["name"] for r in records if r["status"] == "ok" and not r["within_window"]]
  if outside:
    logging.warning("sweep: packed bytes OUTSIDE the budget window for %s", outside)
  print(md)
  out.update(records=records, rows=rows, most_popular=pop)
  return out
