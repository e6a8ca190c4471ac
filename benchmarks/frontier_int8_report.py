"""Makes docs/results/frontier_gowalla_mf_int8.{csv,png} (and prints its Markdown tables) from a sweep workdir.

  python benchmarks/frontier_int8_report.py runs/sweep_gowalla_mf_int8_e25

New rows: every finished run (``runs/*/sweep_run.json``) of the workdir, with the post-training
quantization entries of its eval.json. Earlier rows: the float32 Gowalla MF frontier of the complete
sweep at commit f1f0891 (≤ 300 epochs), copied from its results table, NOT rerun; their packed bytes
are the solver's (exact for full/QR/hashing, the budget for PEP/CERP, whose files filled 100.0 %).
"""

import csv
import glob
import json
import os
import sys

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "docs", "results")
N, D_REF = 70_839, 128
# method, setting, budget fraction, packed bytes, Recall@20, NDCG@20 (commit f1f0891, README table)
EARLIER = [
    ("full", "d=3", 0.025, 850_266, 0.0734, 0.0642),
    ("full", "d=6", 0.05, 1_700_334, 0.0980, 0.0817),
    ("full", "d=12", 0.1, 3_400_470, 0.1116, 0.0933),
    ("qr", "b=1,729", 0.025, 906_739, 0.0188, 0.0161),
    ("qr", "b=3,520", 0.05, 1_813_479, 0.0127, 0.0120),
    ("qr", "b=7,072", 0.1, 3_626_958, 0.0153, 0.0150),
    ("hash", "B=1,770", 0.025, 906_739, 0.0036, 0.0022),
    ("hash", "B=3,541", 0.05, 1_813_479, 0.0103, 0.0082),
    ("hash", "B=7,083", 0.1, 3_626_958, 0.0182, 0.0152),
    ("pep", "s=0.986", 0.025, 906_739, 0.0031, 0.0043),
    ("pep", "s=0.966", 0.05, 1_813_479, 0.0046, 0.0063),
    ("pep", "s=0.926", 0.1, 3_626_958, 0.0070, 0.0088),
    ("cerp", "b=1,666 s=0.5", 0.025, 906_739, 0.0073, 0.0058),
    ("cerp", "b=3,333 s=0.5", 0.05, 1_813_479, 0.0147, 0.0124),
    ("cerp", "b=6,666 s=0.5", 0.1, 3_626_958, 0.0299, 0.0264),
]
COLUMNS = ("source", "method", "value_dtype", "budget_fraction", "setting", "max_epochs",
           "best_epoch", "packed_bytes", "recall@20", "ndcg@20", "float32_recall@20",
           "float32_ndcg@20", "float16_packed_bytes", "float16_delta_recall@20",
           "int8_packed_bytes", "int8_delta_recall@20", "int8_delta_ndcg@20", "train_seconds")


def new_rows(workdir: str) -> list:
  rows = []
  for path in sorted(glob.glob(os.path.join(workdir, "runs", "*", "sweep_run.json"))):
    with open(path, encoding="utf-8") as f:
      r = json.load(f)
    with open(os.path.join(os.path.dirname(path), "config.json"), encoding="utf-8") as f:
      max_epochs = json.load(f)["retrain"]["max_epochs"]
    q, f32 = r.get("quantized") or {}, r.get("float32") or {}
    rows.append({
        "source": "this session", "method": r["method"], "value_dtype": r.get("value_dtype", "float32"),
        "budget_fraction": r["budget_fraction"], "setting": r["summary"], "max_epochs": max_epochs,
        "best_epoch": r.get("best_epoch"), "packed_bytes": r["packed_bytes"],
        "recall@20": r["recall@20"], "ndcg@20": r["ndcg@20"],
        "float32_recall@20": f32.get("recall@20"), "float32_ndcg@20": f32.get("ndcg@20"),
        "float16_packed_bytes": q.get("float16", {}).get("packed_bytes"),
        "float16_delta_recall@20": q.get("float16", {}).get("delta_recall@20"),
        "int8_packed_bytes": q.get("int8", {}).get("packed_bytes"),
        "int8_delta_recall@20": q.get("int8", {}).get("delta_recall@20"),
        "int8_delta_ndcg@20": q.get("int8", {}).get("delta_ndcg@20"),
        "train_seconds": round(r["train_seconds"])})
  return rows


def earlier_rows() -> list:
  return [{"source": "earlier sweep (f1f0891), not rerun", "method": m, "value_dtype": "float32",
           "budget_fraction": f, "setting": s, "max_epochs": 300, "packed_bytes": b,
           "recall@20": r, "ndcg@20": n} for m, s, f, b, r, n in EARLIER]


def plot(path: str, rows: list) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
  markers = {"full": "s", "qr": "^", "hash": "v", "pep": "D", "cerp": "o"}
  groups = {}
  for r in rows:
    groups.setdefault((r["source"], r["method"], r["value_dtype"], r["max_epochs"]), []).append(r)
  for ax, k in zip(axes, ("recall@20", "ndcg@20")):
    for (src, m, vdt, ep), rs in groups.items():
      x, y = zip(*sorted((r["packed_bytes"], r[k]) for r in rs))
      new = src == "this session"
      ax.plot(x, y, marker=markers[m], linestyle="--" if vdt == "int8" else "-",
              alpha=1.0 if new or m == "full" else 0.45, markersize=8 if new else 5,
              label=f"{m}{'' if vdt == 'float32' else '@' + vdt}, ≤{ep} ep"
              + ("" if new else " (earlier sweep)"))
    for f in (0.025, 0.05, 0.1):
      ax.axvline(f * (N * D_REF * 4 + 16), color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("packed embedding bytes (log)")
    ax.set_ylabel(f"test {k}")
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("Gowalla / MF: float32 vs int8 (post-training quantization) at equal bytes")
  fig.tight_layout()
  fig.savefig(path, dpi=130)
  plt.close(fig)


def main(workdir: str) -> None:
  rows = new_rows(workdir) + earlier_rows()
  with open(os.path.join(HERE, "frontier_gowalla_mf_int8.csv"), "w", newline="",
            encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: "" if r.get(k) is None else r[k] for k in COLUMNS})
  plot(os.path.join(HERE, "frontier_gowalla_mf_int8.png"), rows)
  def fmt(v):
    return "–" if v is None else f"{v:+.5f}"

  for r in rows:
    print(f"| {r['source']} | {r['method']}{'' if r['value_dtype'] == 'float32' else '@' + r['value_dtype']}"
          f" | {r['budget_fraction']:.1%} | {r['setting']} | ≤{r['max_epochs']} "
          f"({r.get('best_epoch', '–')}) | {r['packed_bytes']:,} | {r['recall@20']:.4f} | "
          f"{r['ndcg@20']:.4f} | {fmt(r.get('int8_delta_recall@20'))} | "
          f"{fmt(r.get('float16_delta_recall@20'))} |")


if __name__ == "__main__":
  main(sys.argv[1])
