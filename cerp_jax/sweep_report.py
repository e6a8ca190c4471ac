"""The sweep's outputs: aggregation over seeds and learning rates, CSV and Markdown tables, the plot.

Pure functions of the run records :func:`cerp_jax.sweep.run_one` returns (no training, no JSON
state). :func:`write_results` writes, into a sweep's workdir:

  runs.csv                    one row per run (:data:`RUN_COLUMNS`)
  results.csv, results.md     one row per (method, value dtype, budget) (:data:`RESULT_COLUMNS`):
                              bytes, Recall@20, NDCG@20, train time, and pivots of Recall@20/NDCG@20
  frontier.png                Recall@20 and NDCG@20 against packed bytes (log x), one line per method
                              spec (method + value dtype)
"""

from __future__ import annotations

import csv
import math
import os
from typing import Optional, Sequence

import numpy as np

from cerp_jax import budget as budget_lib
from cerp_jax import packing
from cerp_jax import workdir as workdir_lib

METHOD_LABELS = {"full": "full table (smaller d)", "qr": "QR", "hash": "hashing", "pep": "PEP",
                 "cerp": "CERP", "magnitude": "magnitude pruning (no retraining)"}
MARKERS = {"full": "s", "qr": "^", "hash": "v", "pep": "D", "cerp": "o", "magnitude": "X"}
COLORS = {"magnitude": "tab:olive"}  # frontier.png; other methods take the colour cycle's
LINESTYLES = {"float32": "-", "float16": ":", "int8": "--"}  # frontier.png, per value dtype


def label(method: str, value_dtype: str = "float32") -> str:
  """A method's name in tables and plots, with its value dtype: 'full table (smaller d), int8'."""
  name = METHOD_LABELS.get(method, method)
  return name if value_dtype == "float32" else f"{name}, {value_dtype}"


def aggregate(records: Sequence[dict], metric_keys: Sequence[str]) -> list[dict]:
  """One row per (method, value dtype, budget): the learning rate with the best mean validation selection value
  over seeds, then means (and standard deviations) over its seeds.

  Returns:
    rows with ``method, value_dtype, budget_fraction, budget_bytes, reference, dim`` (the model's d
    when the records carry it), ``setting, lr, seeds, num_seeds,
    packed_bytes`` (max over seeds), ``packed_bytes_min``, ``fill`` (max), ``within_window`` (all
    seeds), ``nonzeros`` (mean), each metric's mean and ``<metric>_std`` over the seeds that recorded
    it (None when none did), ``valid_selection``,
    ``train_seconds`` (mean), ``status``.
  """
  groups: dict = {}
  for r in records:
    key = (r["method"], r.get("value_dtype", "float32"), r["budget_fraction"], r["reference"])
    groups.setdefault(key, []).append(r)
  rows = []
  for (method, value_dtype, frac, ref), recs in groups.items():
    by_lr: dict = {}
    for r in recs:
      by_lr.setdefault(r["lr"], []).append(r)

    def lr_score(item):
      ok = [r for r in item[1] if r["status"] == "ok"]
      return (len(ok) > 0, np.mean([r["valid_selection"] for r in ok]) if ok else -np.inf)

    lr, chosen = max(sorted(by_lr.items()), key=lr_score)
    ok = [r for r in chosen if r["status"] == "ok"]
    row = {"method": method, "value_dtype": value_dtype, "budget_fraction": frac, "budget_bytes": chosen[0]["budget_bytes"],
           "reference": ref, "dim": chosen[0]["setting"].get("overrides", {}).get("model.dim"),
           "setting": chosen[0]["summary"], "lr": lr,
           "seeds": " ".join(str(r["seed"]) for r in chosen), "num_seeds": len(chosen),
           "status": "ok" if len(ok) == len(chosen) else
           ("partial" if ok else chosen[0]["status"])}
    if ok:
      packed = [r["packed_bytes"] for r in ok]
      row.update(packed_bytes=max(packed), packed_bytes_min=min(packed),
                 fill=max(packed) / row["budget_bytes"],
                 within_window=all(r["within_window"] for r in ok),
                 nonzeros=float(np.mean([r["nonzeros"] for r in ok])),
                 valid_selection=float(np.mean([r["valid_selection"] for r in ok])),
                 train_seconds=float(np.mean([r["train_seconds"] for r in ok])))
      for k in metric_keys:  # over the runs that recorded k (a record kept from an older
        v = [r[k] for r in ok if r.get(k) is not None]  # workdir may lack some cut-offs)
        row[k] = float(np.mean(v)) if v else None
        row[k + "_std"] = (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) if v else None
    else:
      row.update(packed_bytes=None, packed_bytes_min=None, fill=None, within_window=False,
                 nonzeros=None, valid_selection=None,
                 train_seconds=float(np.mean([r["train_seconds"] for r in chosen])))
      for k in metric_keys:
        row[k] = row[k + "_std"] = None
    rows.append(row)
  order = {m: i for i, m in enumerate(budget_lib.METHODS)}
  dtypes = {d: i for i, d in enumerate(budget_lib.VALUE_DTYPES)}
  rows.sort(key=lambda r: (r["reference"], order.get(r["method"], 99), dtypes[r["value_dtype"]],
                           r["budget_fraction"]))
  return rows


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str]) -> None:
  """Writes rows (dicts) with the given columns; missing values are empty."""
  tmp = workdir_lib.tmp_path(path)
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
  os.replace(tmp, path)


RESULT_COLUMNS = ("method", "value_dtype", "budget_fraction", "budget_bytes", "reference", "setting", "lr", "seeds",
                  "num_seeds", "packed_bytes", "packed_bytes_min", "fill", "within_window",
                  "nonzeros", "recall@20", "recall@20_std", "ndcg@20", "ndcg@20_std", "recall@50",
                  "ndcg@50", "valid_selection", "train_seconds", "status")
RUN_COLUMNS = ("name", "method", "value_dtype", "budget_fraction", "budget_bytes", "reference", "seed", "lr",
               "summary", "status", "packed_bytes", "fill", "within_window", "nonzeros",
               "recall@20", "ndcg@20", "recall@50", "ndcg@50", "valid_selection", "best_epoch",
               "epochs", "prune_seconds", "retrain_seconds", "train_seconds", "wall_seconds",
               "min_per_row", "empty_rows")  # the last two: magnitude runs only


def _fmt(v, spec=".4f"):
  return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _metric_cell(r, k):
  if r.get(k) is None:
    return "–"
  s = f"{r[k]:.4f}"
  if r.get("num_seeds", 1) > 1:
    s += f" ± {r[k + '_std']:.4f}"
  return s


def _seconds(v):
  if v is None:
    return "–"
  return f"{v:.0f} s" if v < 120 else (f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.1f} h")


def markdown(rows: Sequence[dict], config, num_entities: int, pop: Optional[dict]) -> str:
  """results.md: the protocol, the method × budget table, and pivots of Recall@20 and NDCG@20."""
  sc, rc, ec = config.sweep, config.retrain, config.eval
  full_bytes = packing.full_table_bytes(num_entities, sc.reference_dim)
  sel = f"{ec.selection_split} {ec.selection_metric}"
  lines = [
      f"# Memory–accuracy frontier: {config.data.name} / {config.model.backbone}", "",
      f"N = {num_entities:,} entities; budgets are fractions of the full float32 [N, "
      f"{sc.reference_dim}] table ({full_bytes:,} bytes) and are measured as the size of the packed "
      f"file (cerp_jax.packing); window [{sc.window[0]:.0%}, {sc.window[1]:.0%}] of each budget.",
      f"Protocol (every method): retraining {rc.groups_per_step} triples/step, Adam lr grid "
      f"{tuple(sc.lrs)} (best mean {sel} chosen), L2 {rc.l2_penalty:g}, ≤ {rc.max_epochs} epochs, "
      f"evaluation every {ec.every_epochs} epochs, patience {ec.patience}, seeds {tuple(sc.seeds)}; "
      f"CERP and PEP add stage 1 (pruning) before their lottery-ticket retraining. Test metrics of "
      f"the selected checkpoint" + (" (± = std over seeds)." if len(sc.seeds) > 1 else "."),
      "Train time = stage 1 + training steps of stage 2 (evaluations excluded), mean over seeds.",
      "A method with a value dtype (e.g. 'full table (smaller d), int8' = `full@int8`) is sized for "
      "tables packed in that dtype and trained in float32; its file is packed in that dtype after "
      "training (post-training quantization) and its metrics are those of the packed tables.",
      "Magnitude pruning (no retraining) prunes the trained reference full table of the same seed and "
      "lr to PEP's non-zeros, each row keeping at least m entries (m chosen on "
      f"{sel}); its train time is the reference's plus the pruning.",
      "", "| method | budget | setting | packed bytes | of budget | Recall@20 | NDCG@20 | train time |",
      "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    budget = "reference" if r["reference"] else f"{r['budget_fraction']:.1%}"
    share = "–" if r.get("fill") is None else f"{r['fill']:.1%}" + (
        "" if r["within_window"] else " ⚠ outside window")
    bytes_ = "–" if r.get("packed_bytes") is None else f"{r['packed_bytes']:,}"
    status = "" if r["status"] == "ok" else f" ({r['status']})"
    lines.append(f"| {label(r['method'], r.get('value_dtype', 'float32'))} | {budget} | {r['setting']}"
                 f"{status} | {bytes_} | {share} | {_metric_cell(r, 'recall@20')} | "
                 f"{_metric_cell(r, 'ndcg@20')} | {_seconds(r.get('train_seconds'))} |")
  if pop:
    lines.append(f"| most popular | – | item popularity (no embedding) | – | – | {pop['recall@20']:.4f} | "
                 f"{pop['ndcg@20']:.4f} | – |")
  budgets = sorted(sc.budgets)
  for k, title in (("recall@20", "Recall@20"), ("ndcg@20", "NDCG@20")):
    lines += ["", f"## {title} by method × budget", "",
              "| method | " + " | ".join(f"{b:.1%}" for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for spec in sc.methods:
      m, vdt = budget_lib.parse_method(spec)
      cells = []
      for b in budgets:
        r = next((r for r in rows if (r["method"], r.get("value_dtype", "float32")) == (m, vdt) and
                  r["budget_fraction"] == b and not r["reference"]), None)
        cells.append("–" if r is None else _fmt(r.get(k)))
      lines.append(f"| {label(m, vdt)} | " + " | ".join(cells) + " |")
  refs = [r for r in rows if r["reference"] and r.get("recall@20") is not None]
  if refs:
    lines.append("")
  for ref in refs:
    lines.append(f"Full table d={_ref_dim(ref, sc)} (reference, {ref['packed_bytes']:,} bytes): "
                 f"Recall@20 {ref['recall@20']:.4f}, NDCG@20 {ref['ndcg@20']:.4f}.")
  return "\n".join(lines) + "\n"


def _ref_dim(row: dict, sweep_config) -> int:
  """A reference row's d: the record's ``model.dim``, else d_ref."""
  return row.get("dim") or sweep_config.reference_dim


def bytes_label(x: float, _pos=None) -> str:
  """Tick label of a byte count, decimal units: ``906739 → '907 KB'``, ``1813479 → '1.81 MB'``."""
  for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
    if x >= scale:
      return f"{x / scale:.3g} {unit}"
  return f"{x:.0f} B"


def plot_frontier(path: str, rows: Sequence[dict], config, pop: Optional[dict],
                  num_entities: int) -> None:
  """frontier.png: Recall@20 and NDCG@20 against packed bytes (log x), one line per method spec
  (method + value dtype: float16 dotted, int8 dashed, same marker as the method; magnitude pruning
  its own marker and colour), a star per reference full table (black at d_ref, grey at the
  ``extra_reference_dims``), a dashed line for the most-popular ranking."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for ax, (k, title) in zip(axes, (("recall@20", "Recall@20"), ("ndcg@20", "NDCG@20"))):
    for spec in config.sweep.methods:
      m, vdt = budget_lib.parse_method(spec)
      pts = sorted((r["packed_bytes"], r[k], r.get(k + "_std") or 0.0) for r in rows
                   if (r["method"], r.get("value_dtype", "float32")) == (m, vdt)
                   and not r["reference"] and r.get(k) is not None)
      if pts:
        x, y, e = map(np.asarray, zip(*pts))
        ax.errorbar(x, y, yerr=e if e.any() else None, marker=MARKERS.get(m, "o"), capsize=3,
                    linestyle=LINESTYLES[vdt], label=label(m, vdt), color=COLORS.get(m))
    for ref in (r for r in rows if r["reference"] and r.get(k) is not None):
      d = _ref_dim(ref, config.sweep)
      ax.plot([ref["packed_bytes"]], [ref[k]], marker="*", markersize=15, linestyle="none",
              color="black" if d == config.sweep.reference_dim else "grey",
              label=f"full table d={d}")
    if pop:
      ax.axhline(pop[k], color="grey", linestyle="--", linewidth=1, label="most popular")
    full_bytes = packing.full_table_bytes(num_entities, config.sweep.reference_dim)
    for f in sorted(config.sweep.budgets):  # every budget of the sweep, labelled, run or not yet
      ax.axvline(f * full_bytes, color="grey", linestyle=":", linewidth=1)
      ax.annotate(f"{f:.1%}", (f * full_bytes, 1.0), xycoords=("data", "axes fraction"),
                  xytext=(2, -10), textcoords="offset points", fontsize=7, color="grey")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(bytes_label))
    ax.xaxis.set_minor_formatter(ticker.FuncFormatter(  # 2, 3, 5 × 10^k only: no crowding
        lambda x, pos: bytes_label(x) if f"{x:.0e}"[0] in "235" else ""))
    ax.tick_params(axis="x", which="both", labelsize=7)
    ax.set_xlabel("packed embedding bytes (log; KB, MB = 10³, 10⁶ bytes)")
    ax.set_ylabel(f"test {title}")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{config.data.name} / {config.model.backbone}: accuracy vs memory")
  fig.tight_layout()
  tmp = workdir_lib.tmp_path(path, ".tmp.png")
  fig.savefig(tmp, dpi=130)
  plt.close(fig)
  os.replace(tmp, path)


def write_results(workdir: str, records: Sequence[dict], config, num_entities: int,
                  pop: Optional[dict]) -> tuple[list[dict], str]:
  """Writes ``runs.csv``, ``results.csv``, ``results.md`` and ``frontier.png`` into ``workdir``.

  Args:
    workdir: the sweep's directory.
    records: the finished runs' records (:func:`cerp_jax.sweep.run_one`).
    config: the sweep config (``config.sweep``, ``retrain``, ``eval``, ``data``, ``model``).
    num_entities: N = users + items.
    pop: the most-popular ranking's test metrics (``recall@20``, ``ndcg@20``), or None.

  Returns:
    (the :func:`aggregate` rows, the text of ``results.md``).
  """
  metric_keys = sorted({k for r in records for k in r if "@" in k})
  rows = aggregate(records, metric_keys)
  write_csv(os.path.join(workdir, "runs.csv"), records, RUN_COLUMNS)
  write_csv(os.path.join(workdir, "results.csv"), rows, RESULT_COLUMNS)
  md = markdown(rows, config, num_entities, pop)
  md_path = os.path.join(workdir, "results.md")
  tmp = workdir_lib.tmp_path(md_path)
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(md)
  os.replace(tmp, md_path)
  plot_frontier(os.path.join(workdir, "frontier.png"), rows, config, pop, num_entities)
  return rows, md
