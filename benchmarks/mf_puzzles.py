"""Why QR/hashing fall below most-popular and PEP far below narrow tables on Gowalla MF.

  python benchmarks/mf_puzzles.py --full_workdir=runs/gowalla_mf_full128 \
      --out=docs/results/gowalla_mf_puzzles

Three checks at the frontier's budgets (fractions of the float32 [N, 128] table), written to
``<out>.csv`` and to the table of ``<out>.md`` (text below its notes mark is kept):

1. *Can the hashing trick represent item popularity at all?* Each item's vector is the sum of k
   hashed rows of a shared [B, d] table, so every user-independent item score the model can express
   is ``Σ_j t[h_j(i)]`` for some ``t ∈ R^B``. The least-squares ``t`` fitting item popularity gives
   the best such popularity ranking (up to the fit criterion); its test Recall/NDCG@20 is compared
   with most-popular's. (QR's ``Q[i div b] ∘ R[i mod b]`` spans any ``[⌈N/b⌉, b]`` matrix of rank
   ≤ d, so its popularity term is representable exactly whenever min(⌈N/b⌉, b) ≤ d.)
2. *What does element pruning at PEP's sparsity do to rows?* Global magnitude pruning of the trained
   full d = 128 table (``--full_workdir``: a ``configs/gowalla_mf.py:full`` run; its selected
   checkpoint, the run finished or not) to PEP's non-zero budget at each fraction, keeping at least m entries per row
   (m ∈ ``--min_per_row``; the sweep's ``magnitude`` method picks the best on validation): all-zero
   user and item rows, and test metrics of the pruned table without retraining. Restoring, pruning
   and scoring are the library's (:mod:`cerp_jax.magnitude`, :func:`cerp_jax.finalize.restore_best`).
3. Most-popular on the same split, computed here.
4. *And PEP's own masks?* With ``--pep_workdir`` (a finished PEP stage 1, e.g. the shared one
   ``sweep.py --config=configs/sweep_gowalla_mf.py --config.sweep.methods='("pep",)'`` writes under
   ``runs/``): the all-zero user and item rows of each of its snapshots, whose masks the retraining
   keeps.
"""

from __future__ import annotations

import csv
import math
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spl  # noqa: E402

from cerp_jax import baselines  # noqa: E402
from cerp_jax import budget as budget_lib  # noqa: E402
from cerp_jax import data as data_lib  # noqa: E402
from cerp_jax import evaluation  # noqa: E402
from cerp_jax import finalize  # noqa: E402
from cerp_jax import magnitude  # noqa: E402
from configs import gowalla_mf  # noqa: E402

flags.DEFINE_string("full_workdir", None, "A full-table run (d = 128) of configs/gowalla_mf.py:full.")
flags.DEFINE_list("budgets", ["0.025", "0.05", "0.1"], "Fractions of the float32 [N, 128] table.")
flags.DEFINE_list("min_per_row", ["0", "1", "2", "4", "8"], "m: entries every row keeps.")
flags.DEFINE_string("pep_workdir", None, "A finished PEP stage 1 (its snapshots' empty rows).")
flags.DEFINE_string("out", "docs/results/gowalla_mf_puzzles", "Output path without extension.")
FLAGS = flags.FLAGS
REFERENCE_DIM = 128
NOTES_MARK = "<!-- notes: text below this line is kept when the table is rebuilt -->"


def _metrics(ev: evaluation.Evaluator, score_fn, args) -> dict:
  res = ev.evaluate(score_fn, args)
  return {"recall@20": float(res["recall@20"]), "ndcg@20": float(res["ndcg@20"])}


def _item_scores(ev, scores: np.ndarray) -> dict:
  """Metrics of one user-independent ranking ``scores [I]``."""
  return _metrics(ev, lambda a, u: jnp.broadcast_to(a, (u.shape[0], a.shape[0])),
                  jnp.asarray(scores, jnp.float32))


def hash_popularity_fit(data, ev, fraction: float) -> dict:
  """The best least-squares popularity term of the hashing trick at ``fraction``'s B rows."""
  n = data.num_users + data.num_items
  s = budget_lib.solve("hash", fraction, n, REFERENCE_DIM)
  rows, k, seed = s.overrides["model.hash_rows"], 2, 0
  items = np.arange(data.num_users, n)  # item i is entity U + i
  idx = np.asarray(baselines.hash_indices(items, rows, k, seed, xp=np))
  a = sp.csr_matrix((np.ones(idx.size), idx.reshape(-1), np.arange(0, idx.size + 1, k)),
                    shape=(data.num_items, rows))
  pop = np.asarray(data.train.sum(axis=0)).ravel().astype(np.float64)
  t = spl.lsqr(a, pop, atol=1e-10, btol=1e-10, iter_lim=10_000)[0]
  fit = a @ t
  return {"check": "hash popularity fit", "budget": fraction, "setting": f"B={rows:,} k={k}",
          "fit_corr": float(np.corrcoef(fit, pop)[0, 1]), **_item_scores(ev, fit)}


def qr_rank_bound(data, fraction: float) -> dict:
  n = data.num_users + data.num_items
  s = budget_lib.solve("qr", fraction, n, REFERENCE_DIM)
  b = s.overrides["model.bucket_size"]
  rank = min(math.ceil(n / b), b)
  return {"check": "qr rank bound", "budget": fraction, "setting": f"b={b:,}",
          "note": f"popularity term has rank ≤ {rank} ≤ d = {REFERENCE_DIM}: representable"
                  if rank <= REFERENCE_DIM else f"rank {rank} > d: not always representable"}


def trained_full_table(workdir: str, data):
  """``(table [N, d] float32, evaluate, how)`` of a full-table run, finished or not: its selected
  (best-on-validation) table, :func:`cerp_jax.magnitude.table_evaluator` of its model, a note."""
  from cerp_jax import models  # pylint: disable=g-import-not-at-top
  from cerp_jax import sharding as shard_lib  # pylint: disable=g-import-not-at-top
  from cerp_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = workdir_lib.load_config(workdir)
  plan = shard_lib.ShardingPlan.from_config(config)
  model, variables, meta = finalize.restore_best(config, data, workdir, None, plan,
                                                 allow_unfinished=True)
  table = shard_lib.to_host(model.apply(variables, method=models.Recommender.tables))["E"]
  state = "finished" if meta.get("done") else f"still training at epoch {meta['epoch']}"
  how = f"best validation epoch {meta['best_epoch']} of a run {state}"
  return np.asarray(table, np.float32), magnitude.table_evaluator(model, variables, plan), how


def _table_metrics(evaluate, ev, table) -> dict:
  res = evaluate(ev, {"E": table})
  return {"recall@20": float(res["recall@20"]), "ndcg@20": float(res["ndcg@20"])}


def magnitude_rows(data, table, evaluate, valid_ev, test_ev, fraction: float, ms) -> list:
  """Global magnitude pruning at PEP's non-zeros for ``fraction``, per feasible m."""
  n, d = table.shape
  s = budget_lib.solve("pep", fraction, n, REFERENCE_DIM)
  u = data.num_users
  out = []
  for m in magnitude.feasible_min_per_row(ms, s.nonzeros, n, d):
    pruned, mask = magnitude.prune(table, s.nonzeros, m)
    row = {"check": "magnitude pruning of the trained d=128 table", "budget": fraction,
           "setting": f"nnz={s.nonzeros:,} (s={1 - s.nonzeros / (n * d):.4f}) m={m}",
           "empty_user_rows": magnitude.empty_rows(mask[:u]),
           "empty_item_rows": magnitude.empty_rows(mask[u:])}
    row.update({f"valid_{k}": v for k, v in _table_metrics(evaluate, valid_ev, pruned).items()})
    row.update(_table_metrics(evaluate, test_ev, pruned))
    out.append(row)
  return out


def pep_snapshot_rows(workdir: str, data) -> list:
  """All-zero user and item rows of every snapshot of a finished PEP stage 1 in ``workdir``."""
  from cerp_jax import train  # pylint: disable=g-import-not-at-top
  from cerp_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = workdir_lib.load_config(workdir)
  prune_state, summary = train.load_prune_results(config, data, workdir)
  n, d = prune_state.snapshots["E"].shape[1:]
  u, out = data.num_users, []
  for i, t in enumerate(summary["targets"]):
    if not t["reached"]:
      continue
    mask = np.asarray(prune_state.snapshots["E"][i]) != 0
    out.append({"check": "PEP's own stage-1 snapshot (the retrained mask)",
                "budget": _pep_fraction(t["budget"], n, d),
                "setting": f"nnz={t['nonzeros']:,} (s={t['sparsity']:.4f}) at step {t['step']:,}",
                "empty_user_rows": magnitude.empty_rows(mask[:u]),
                "empty_item_rows": magnitude.empty_rows(mask[u:]),
                "note": f"mean non-zeros per row {mask.sum() / n:.1f}"})
  return out


def _pep_fraction(budget: int, n: int, d: int):
  """The frontier budget (fraction of the float32 [n, d] table) sized at ``budget`` non-zeros by
  PEP, or ``'–'`` when none of the usual fractions is."""
  for f in (0.025, 0.05, 0.1, 0.25):
    try:
      if abs(budget_lib.solve("pep", f, n, d).nonzeros - budget) <= 1:
        return f
    except budget_lib.BudgetError:  # a table too small for that fraction
      continue
  return "–"


def write(rows: list, out: str) -> None:
  keys = ["check", "budget", "setting", "fit_corr", "empty_user_rows", "empty_item_rows",
          "valid_recall@20", "valid_ndcg@20", "recall@20", "ndcg@20", "note"]
  path = pathlib.Path(out)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(f"{out}.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
  lines = ["| check | budget | setting | fit corr | empty user rows | empty item rows | "
           "valid R@20 | test Recall@20 | test NDCG@20 | note |", "|" + "---|" * 10]
  for r in rows:
    def f(k, nd=4):
      v = r.get(k)
      return "–" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else f"{v:,}"
                                    if isinstance(v, int) else str(v))
    lines.append(f"| {r['check']} | {r['budget']} | {r['setting']} | {f('fit_corr', 3)} | "
                 f"{f('empty_user_rows')} | {f('empty_item_rows')} | {f('valid_recall@20')} | "
                 f"{f('recall@20')} | {f('ndcg@20')} | {r.get('note', '')} |")
  print("\n".join(lines))
  md = pathlib.Path(f"{out}.md")
  notes = md.read_text(encoding="utf-8").split(NOTES_MARK, 1)[1] if (
      md.exists() and NOTES_MARK in md.read_text(encoding="utf-8")) else "\n"
  head = ["# Gowalla MF: why QR/hashing fall below most-popular and PEP below narrow tables", "",
          "Generated by `python benchmarks/mf_puzzles.py --full_workdir=runs/gowalla_mf_full128 "
          "--out=docs/results/gowalla_mf_puzzles` (its docstring says what each check does).", "",
          *lines, "", NOTES_MARK]
  md.write_text("\n".join(head) + notes, encoding="utf-8")


def main(argv):
  del argv
  config = gowalla_mf.get_config()
  data = data_lib.load_interactions(config)
  test_ev = evaluation.Evaluator(data, "test", (20,), 1024)
  valid_ev = evaluation.Evaluator(data, "valid", (20,), 1024)
  pop = np.asarray(data.train.sum(axis=0)).ravel()
  rows = [{"check": "most popular", "budget": "–", "setting": "item popularity",
           **_item_scores(test_ev, pop)}]
  fractions = [float(b) for b in FLAGS.budgets]
  rows += [hash_popularity_fit(data, test_ev, f) for f in fractions]
  rows += [qr_rank_bound(data, f) for f in fractions]
  if FLAGS.full_workdir:
    table, evaluate, how = trained_full_table(FLAGS.full_workdir, data)
    rows.append({"check": "trained full table, unpruned", "budget": 1.0,
                 "setting": f"d={table.shape[1]}", "note": how, "empty_user_rows": 0,
                 "empty_item_rows": 0, **_table_metrics(evaluate, test_ev, table)})
    for f in fractions:
      rows += magnitude_rows(data, table, evaluate, valid_ev, test_ev, f,
                             [int(m) for m in FLAGS.min_per_row])
  if FLAGS.pep_workdir:
    rows += pep_snapshot_rows(FLAGS.pep_workdir, data)
  write(rows, FLAGS.out)


if __name__ == "__main__":
  app.run(main)
