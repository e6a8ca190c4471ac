"""train.py then eval.py on the real MovieLens-100K (a few minutes on 2 cores)."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from cerp_jax import data as D
from cerp_jax import evaluation as ev
from conftest import REPO, SHARED_DATA

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED_DATA / "movielens-100k" / "u.data").exists(),
                       reason="../shared/data/movielens-100k missing"),
]


def _run(args, timeout):
  r = subprocess.run([sys.executable, *args, "--config.progress_bar=False"]
                     if args[0] == "train.py" else [sys.executable, *args], cwd=REPO,
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-3000:]
  return r


def test_train_then_eval_on_real_ml100k(tmp_path):
  wd = str(tmp_path / "ml100k")
  _run(["train.py", "--config=configs/ml100k_mf.py", f"--workdir={wd}"], timeout=1500)
  r = _run(["eval.py", f"--workdir={wd}"], timeout=600)
  assert "| sparsity_0.5000 |" in r.stdout and "| sparsity_0.6000 |" in r.stdout

  with open(os.path.join(wd, "prune", "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(wd, "eval.json")) as f:
    results = json.load(f)["results"]
  assert [r["target_sparsity"] for r in results] == [0.5, 0.6]

  # most-popular ranking on the same test split, computed here
  from configs import ml100k_mf
  data = D.load_interactions(ml100k_mf.get_config())
  pop = jnp.asarray(ev.most_popular_scores(data.train))
  e = ev.Evaluator(data, "test", (20,), 1024)
  mostpop = e.evaluate(lambda a, u: jnp.broadcast_to(a, (u.shape[0], a.shape[0])), pop)

  two_bd = summary["num_entries"]
  for res, t in zip(results, summary["targets"]):
    assert t["reached"]
    assert t["nonzeros"] <= t["budget"] < two_bd  # pruning really happened
    assert res["nonzeros"] <= t["nonzeros"]  # retraining keeps the snapshot's mask
    assert res["topk_match_packed_vs_dense"]
    assert res["packed_bytes"] == os.path.getsize(res["packed_file"])
    assert res["packed_bytes"] < res["full_table_bytes"]
    assert res["compression_ratio"] == pytest.approx(res["full_table_bytes"] / res["packed_bytes"])
    assert not res["sampled"]
    assert res["recall@20"] > mostpop["recall@20"], (res["target"], res["recall@20"], mostpop)
  for key in ("target_sparsity", "nonzeros", "packed_bytes", "full_table_bytes",
              "compression_ratio", "recall@20", "ndcg@20", "recall@5", "ndcg@50"):
    assert key in results[0]

  # metrics.jsonl holds per-epoch lines of both stages
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    stages = {json.loads(line)["stage"] for line in f}
  assert {"prune", "retrain", "test"} <= stages
