"""Rows, agreement test and outputs (CSV, Markdown, overlay plot) of the parity study.

A row is one dataset × backbone × budget × side (× method, for the full-table references). Test
metrics are per-metric maxima over the retraining evaluations, the original's report, on both
sides. Agreement (issue #13): the original's mean lies within 2 pooled standard deviations of
cerp_jax's, or within 3 % of it (relative).
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
from typing import Optional

import numpy as np

COLUMNS = ("dataset", "backbone", "target_sparsity", "side", "method", "seeds",
           "recall@20_mean", "recall@20_std", "ndcg@20_mean", "ndcg@20_std", "snapshot_step",
           "stage1_s", "stage2_s", "packed_bytes")
NOTES_MARK = "<!-- notes: text below this line is kept when the table is rebuilt -->"
NUM_ENTITIES = 943 + 1682  # MovieLens-100K users + items


def mean_std(values) -> tuple[float, float]:
  """(mean, sample std with ddof=1; 0 for one value; NaN for none)."""
  v = np.asarray([x for x in values if x is not None], float)
  if v.size == 0:
    return math.nan, math.nan
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def pooled_std(std_a: float, n_a: int, std_b: float, n_b: int) -> float:
  """√(((n_a−1)s_a² + (n_b−1)s_b²)/(n_a+n_b−2)); a one-run side adds no degree of freedom."""
  dof = max(n_a - 1, 0) + max(n_b - 1, 0)
  if dof == 0:
    return 0.0
  return math.sqrt((max(n_a - 1, 0) * std_a ** 2 + max(n_b - 1, 0) * std_b ** 2) / dof)


def agrees(orig_mean: float, orig_std: float, orig_n: int, ours_mean: float, ours_std: float,
           ours_n: int) -> Optional[bool]:
  """Issue #13's rule; None when either mean is missing."""
  if any(map(math.isnan, (orig_mean, ours_mean))):
    return None
  gap = abs(orig_mean - ours_mean)
  return bool(gap <= 2 * pooled_std(orig_std, orig_n, ours_std, ours_n) + 1e-12
              or gap <= 0.03 * abs(ours_mean))


def _row(backbone, target, side, method, seeds, recalls, ndcgs, steps, s1, s2, nbytes=None):
  r_m, r_s = mean_std(recalls)
  n_m, n_s = mean_std(ndcgs)
  return {"dataset": "ml100k", "backbone": backbone, "target_sparsity": target, "side": side,
          "method": method, "seeds": seeds, "recall@20_mean": r_m, "recall@20_std": r_s,
          "ndcg@20_mean": n_m, "ndcg@20_std": n_s,
          "snapshot_step": mean_std(steps)[0] if steps else math.nan,
          "stage1_s": mean_std(s1)[0], "stage2_s": mean_std(s2)[0], "packed_bytes": nbytes}


def _max_metric(history: list, key: str) -> Optional[float]:
  vals = [h[key] for h in history if key in h]
  return max(vals) if vals else None


def _load(path: pathlib.Path):
  return json.loads(path.read_text()) if path.exists() else None


def original_row(wd: pathlib.Path, backbone: str, target: float) -> dict:
  """The original's row over its seeds (``wd/original/<backbone>[_seed<s>]/{prune,retrain_<t>}.json``;
  NaN if none finished)."""
  recalls, ndcgs, steps, s1, s2, seeds = [], [], [], [], [], []
  for odir in sorted((wd / "original").glob(f"{backbone}*")) if (wd / "original").exists() else []:
    if not (odir.name == backbone or odir.name.startswith(f"{backbone}_seed")):
      continue
    pr = _load(odir / "prune.json") or {}
    rt = _load(odir / f"retrain_{target:.4f}.json") or {}
    hist = rt.get("history", [])
    step = {round(float(k), 4): v for k, v in pr.get("snapshots", {}).items()}.get(round(target, 4))
    if step is not None:
      steps.append(step)
    s1.append((step is not None, pr.get("seconds")))
    if hist:
      recalls.append(_max_metric(hist, "recall@20"))
      ndcgs.append(_max_metric(hist, "ndcg@20"))
      s2.append(rt.get("seconds"))
      seeds.append(str(pr.get("seed", "")))
  # stage-1 seconds of the seeds that reached this budget (of every seed when none did)
  reached = [x for ok, x in s1 if ok and x is not None]
  return _row(backbone, target, "original", "cerp", ";".join(seeds), recalls, ndcgs, steps,
              reached or [x for _, x in s1 if x is not None], s2)


def _seed_dirs(root: pathlib.Path) -> list:
  return sorted(p for p in root.glob("seed*") if p.is_dir()) if root.exists() else []


def stage1_dir(d: pathlib.Path) -> pathlib.Path:
  """The workdir holding ``d``'s stage 1: ``d`` itself, or its config's ``prune_workdir``."""
  if (d / "prune" / "summary.json").exists():
    return d
  cfg = _load(d / "config.json") or {}
  pw = cfg.get("prune_workdir") or ""
  return pathlib.Path(pw) if pw else d


def cerp_row(wd: pathlib.Path, backbone: str, target: float, nbytes: Optional[int],
             kind: str = "cerp_jax") -> dict:
  """cerp_jax's row over its finished seeds (``wd/<kind>/<backbone>/seed*/``): method ``cerp``, or
  with ``kind='random_ticket'`` the random-mask control (method ``random_ticket``)."""
  method = "cerp" if kind == "cerp_jax" else kind
  recalls, ndcgs, steps, s1, s2, seeds = [], [], [], [], [], []
  for d in _seed_dirs(wd / kind / backbone):
    summ = _load(stage1_dir(d) / "prune" / "summary.json")
    res = _load(d / "retrain" / f"sparsity_{target:.4f}" / "result.json")
    if not summ or not res:
      continue
    t = next(x for x in summ["targets"] if abs(x["target_sparsity"] - target) < 1e-9)
    m = res.get("test_per_metric_max", res["test"])
    recalls.append(m["recall@20"])
    ndcgs.append(m["ndcg@20"])
    steps.append(t["step"])
    s1.append(summ["seconds"])
    s2.append(res["seconds"])
    seeds.append(d.name[4:])
  return _row(backbone, target, "cerp_jax", method, ";".join(seeds), recalls, ndcgs, steps, s1,
              s2, nbytes)


def full_row(wd: pathlib.Path, backbone: str, target: float, dim: int, nbytes: int) -> dict:
  """A full-table reference ``[N, dim]`` trained by cerp_jax under the same protocol."""
  recalls, ndcgs, s2, seeds = [], [], [], []
  for d in sorted((wd / "full" / backbone).glob(f"d{dim}_seed*")):
    res = _load(d / "retrain" / "full" / "result.json")
    if res is None:
      cands = list(d.glob("retrain/*/result.json"))
      res = _load(cands[0]) if cands else None
    if res is None:
      continue
    m = res.get("test_per_metric_max", res["test"])
    recalls.append(m["recall@20"])
    ndcgs.append(m["ndcg@20"])
    s2.append(res["seconds"])
    seeds.append(d.name.split("seed")[1])
  return _row(backbone, target, "cerp_jax", f"full_d{dim}", ";".join(seeds), recalls, ndcgs, [],
              [], s2, nbytes)


def collect(wd, backbones, targets, settings, full_dims: dict) -> list[dict]:
  """Every row of the study, in table order, from whatever has finished under ``wd``."""
  from cerp_jax import budget  # pylint: disable=g-import-not-at-top
  del settings
  wd = pathlib.Path(wd)
  rows = []
  for bb in backbones:
    cfg = _load(next(iter(_seed_dirs(wd / "cerp_jax" / bb)), wd) / "config.json") or {}
    b = cfg.get("model", {}).get("bucket_size", 1024)
    dim = cfg.get("model", {}).get("dim", 64)
    for t in targets:
      nnz = int((1 - t) * 2 * b * dim)
      nbytes = budget.cerp_bytes_range(NUM_ENTITIES, b, dim, nnz)[1]
      rows.append(original_row(wd, bb, t))
      rows.append(cerp_row(wd, bb, t, nbytes))
      if _seed_dirs(wd / "random_ticket" / bb):
        rows.append(cerp_row(wd, bb, t, nbytes, "random_ticket"))
      for d in sorted({dim, full_dims[bb][t]}, reverse=True):
        rows.append(full_row(wd, bb, t, d, budget.dense_bytes([("E", NUM_ENTITIES, d)])))
  return rows


def verdicts(rows: list[dict]) -> list[dict]:
  """Per backbone × budget: agreement of recall@20, ndcg@20 (original vs cerp_jax CERP rows)."""
  out = []
  keys = sorted({(r["backbone"], r["target_sparsity"]) for r in rows},
                key=lambda k: (k[0], k[1]))
  for bb, t in keys:
    o = next(r for r in rows if (r["backbone"], r["target_sparsity"], r["side"], r["method"]) ==
             (bb, t, "original", "cerp"))
    m = next(r for r in rows if (r["backbone"], r["target_sparsity"], r["side"], r["method"]) ==
             (bb, t, "cerp_jax", "cerp"))
    n_o = len([s for s in str(o["seeds"]).split(";") if s])
    n_m = len([s for s in str(m["seeds"]).split(";") if s])
    v = {"backbone": bb, "target_sparsity": t}
    for k in ("recall@20", "ndcg@20"):
      v[k] = agrees(o[f"{k}_mean"], o[f"{k}_std"], n_o, m[f"{k}_mean"], m[f"{k}_std"], n_m)
    out.append(v)
  return out


def _fmt(x, nd=4) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  if isinstance(x, float):
    return f"{x:.{nd}f}"
  return str(x)


def markdown(rows: list[dict]) -> str:
  """The side-by-side table and the agreement table, as Markdown."""
  lines = ["| backbone | s | side | method | seeds | Recall@20 | NDCG@20 | snapshot step | stage 1 s "
           "| stage 2 s | packed bytes |", "|" + "---|" * 11]
  for r in rows:
    rec = f"{_fmt(r['recall@20_mean'])} ± {_fmt(r['recall@20_std'])}"
    nd = f"{_fmt(r['ndcg@20_mean'])} ± {_fmt(r['ndcg@20_std'])}"
    lines.append(f"| {r['backbone']} | {r['target_sparsity']} | {r['side']} | {r['method']} | "
                 f"{r['seeds'] or '–'} | {rec} | {nd} | {_fmt(r['snapshot_step'], 0)} | "
                 f"{_fmt(r['stage1_s'], 0)} | {_fmt(r['stage2_s'], 0)} | "
                 f"{_fmt(r['packed_bytes'])} |")
  lines += ["", "Agreement of the retrained CERP rows (original within 2 pooled sd or 3 % of cerp_jax; "
            "– = a side has no retrained number, e.g. the budget was not reached):", "",
            "| backbone | s | Recall@20 agrees | NDCG@20 agrees |", "|---|---|---|---|"]
  for v in verdicts(rows):
    yn = lambda x: "–" if x is None else ("yes" if x else "**no**")
    lines.append(f"| {v['backbone']} | {v['target_sparsity']} | {yn(v['recall@20'])} | "
                 f"{yn(v['ndcg@20'])} |")
  return "\n".join(lines)


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
  """``parity.csv``: one row per dataset × backbone × budget × side × method (COLUMNS)."""
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
      w.writerow({k: ("" if isinstance(r[k], float) and math.isnan(r[k]) else r[k])
                  for k in COLUMNS})


def read_csv(path: pathlib.Path) -> list[dict]:
  """Reads ``write_csv``'s file back (numbers as float, empty as NaN)."""
  out = []
  with open(path, encoding="utf-8") as f:
    for r in csv.DictReader(f):
      d = dict(r)
      for k in COLUMNS[6:]:
        d[k] = float(d[k]) if d[k] != "" else math.nan
      d["target_sparsity"] = float(d["target_sparsity"])
      out.append(d)
  return out


def trajectories(wd: pathlib.Path, backbone: str) -> dict:
  """``{"original": {seed: [(step, sparsity)]}, "cerp_jax": {seed: [(step, sparsity)]}}`` of
  stage 1."""
  theirs = {}
  for odir in sorted((wd / "original").glob(f"{backbone}*")) if (wd / "original").exists() else []:
    pr = _load(odir / "prune.json") or {}
    if (odir.name == backbone or odir.name.startswith(f"{backbone}_seed")) and pr.get("trajectory"):
      theirs[str(pr.get("seed", odir.name))] = pr["trajectory"]
  ours = {}
  for d in _seed_dirs(wd / "cerp_jax" / backbone):
    path = stage1_dir(d) / "metrics.jsonl"
    if path.exists():
      pts = []
      summ = _load(stage1_dir(d) / "prune" / "summary.json") or {}
      for t in summ.get("targets", []):
        if t.get("reached"):  # the exact snapshot step, at its sparsity
          pts.append((t["step"], t["sparsity"]))
      for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("stage") == "prune" and "prune/sparsity" in rec:
          pts.append((rec["step"], rec["prune/sparsity"]))
      ours[d.name] = pts
  return {"original": theirs, "cerp_jax": ours}


def plot(wd: pathlib.Path, backbones, targets, path: pathlib.Path) -> None:
  """Overlay of stage-1 sparsity vs steps, original (line) and cerp_jax seeds (markers)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(backbones), figsize=(6 * len(backbones), 4), squeeze=False)
  for ax, bb in zip(axes[0], backbones):
    tr = trajectories(wd, bb)
    for j, (seed, pts) in enumerate(sorted(tr["original"].items())):
      x, y = zip(*pts)
      ax.plot(x, y, "-", color="k", lw=1.2, ls=("-", "--", ":")[j % 3],
              label=f"original (PyTorch) {seed}")
    for i, (seed, pts) in enumerate(sorted(tr["cerp_jax"].items())):
      x, y = zip(*sorted(pts))
      ax.plot(x, y, "o", ms=5, color=f"C{i}", label=f"cerp_jax {seed} (snapshot, epoch ends)")
    for t in targets:
      ax.axhline(t, color="grey", ls=":", lw=0.8)
    ax.set_title(f"ML-100K, {bb}: stage-1 sparsity of the 2·b·d entries")
    ax.set_xlabel("stage-1 steps")
    ax.set_ylabel("sparsity")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(rows: list[dict], out: pathlib.Path, settings: dict, wd: pathlib.Path) -> None:
  """Writes ``parity.csv``, ``parity.png`` and ``parity.md`` (keeping the notes of an old md)."""
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  write_csv(rows, out / "parity.csv")
  backbones = sorted({r["backbone"] for r in rows})
  targets = sorted({r["target_sparsity"] for r in rows})
  plot(pathlib.Path(wd), backbones, targets, out / "parity.png")
  notes = ""
  md = out / "parity.md"
  if md.exists() and NOTES_MARK in md.read_text():
    notes = md.read_text().split(NOTES_MARK, 1)[1]
  patches = []
  for bb in backbones:
    e = _load(pathlib.Path(wd) / "original" / bb / "export.json")
    if e:
      patches = e["patches"]
  head = [
      "# Parity: the authors' CERP code vs cerp_jax `:parity`, MovieLens-100K",
      "",
      "Generated by `python benchmarks/parity/run.py --original=PATH --original_python=PY` "
      "(docs/parity.md).",
      "",
      "**Changed settings, the same on both sides (CPU time), passed to the original through its "
      f"own options: thresholds start at {settings['threshold_init']}** (paper: −100; "
      f"`--threshold_init`), **stage-1 Adam lr {settings['prune_lr']}** (paper: 1e-3; `--fm_lr`) "
      f"**and coupled weight decay {settings['prune_weight_decay']}** (paper: 1e-5; "
      "`--fm_l2_regularization`), "
      + (f"**regularizer weight γ₀ {settings['gamma_init']}** (paper: 1; `--gamma_init`), "
         if settings.get("gamma_init", 1.0) != 1.0 else "") +
      "**MLP retraining batches of "
      f"{settings['mlp_retrain_groups']} groups** (paper: 10; `--batch_size_train_factor`); stage 1 runs "
      "until its last budget is met (an epoch cap, `--prune_max_epoch`, only stops a run that never "
      "meets it: its row shows –); retraining capped at "
      f"{settings['mlp_retrain_epochs']} epochs (MLP) / {settings['lightgcn_retrain_epochs']} "
      "(LightGCN) on both sides (the original is stopped after its last evaluation within the cap; "
      "cerp_jax's `retrain.max_epochs`). Metrics: per-metric maxima over the test evaluations (the "
      "original's report), full ranking of all 1,682 items, train items masked. b = 1024, d = 64. "
      "Wall times: 2-core CPU; the notes say which rows ran on a loaded machine (upper bounds).",
      "",
      markdown(rows),
      "",
      "![stage-1 sparsity, original vs cerp_jax](parity.png)",
      "",
      "Patches applied to the scratch copy of the original (never to this repository):",
      "",
      *[f"- {p}" for p in patches],
      "",
      NOTES_MARK,
  ]
  md.write_text("\n".join(head) + notes, encoding="utf-8")
