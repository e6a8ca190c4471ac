"""eval.py's logic (cerp_jax/finalize.py); end-to-end runs are in test_progress, test_checkpoint,
test_baselines and test_packing."""

import numpy as np
import pytest

from cerp_jax import finalize


def test_reference_that_is_not_a_run_is_refused_before_any_work(tmp_path):
  with pytest.raises(FileNotFoundError, match="--reference="):
    finalize.reference_metrics(str(tmp_path))


def test_eval_json_reports_most_popular_for_the_same_users(test_config, tmp_path):
  """eval.json's floor equals a brute-force numpy most-popular ranking (train and validation items
  masked, ties to the smaller id) over all test users; the table prints it."""
  from cerp_jax import data as D  # pylint: disable=g-import-not-at-top
  from cerp_jax import train as T  # pylint: disable=g-import-not-at-top
  c = test_config
  c.model.embedding, c.retrain.max_epochs = "full", 2
  T.train_and_evaluate(c, str(tmp_path))
  out = finalize.evaluate_workdir(str(tmp_path), quantized=())
  data = D.load_interactions(c)
  pop = np.asarray(data.train.sum(axis=0)).ravel()
  seen, test = (data.train + data.valid).toarray() > 0, data.test.toarray() > 0
  recalls = []
  for u in np.nonzero(test.any(axis=1))[0]:
    s = np.where(seen[u], -np.inf, pop)
    top = np.argsort(-s, kind="stable")[:20]
    recalls.append(test[u, top].sum() / test[u].sum())
  assert out["most_popular"]["recall@20"] == pytest.approx(np.mean(recalls), rel=1e-6)
  assert "most-popular ranking (the floor), same users" in finalize.markdown_table(out)


def test_reference_file_names_its_run(tmp_path):
  """A recorded reference (.json with recall@20, ndcg@20, source) is read as a run; a file missing a
  field or not JSON is refused with its name."""
  good = tmp_path / "ref.json"
  good.write_text('{"recall@20": 0.1666, "ndcg@20": 0.1433, "source": "full d=64 (docs)"}')
  assert finalize.reference_metrics(str(good)) == {"workdir": "full d=64 (docs)",
                                                   "recall@20": 0.1666, "ndcg@20": 0.1433}
  bad = tmp_path / "bad.json"
  bad.write_text('{"recall@20": 0.1}')
  with pytest.raises(ValueError, match=r"bad.json: missing field\(s\) \['ndcg@20', 'source'\]"):
    finalize.reference_metrics(str(bad))
  bad.write_text("{")
  with pytest.raises(ValueError, match="bad.json: not JSON"):
    finalize.reference_metrics(str(bad))
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  shipped = finalize.reference_metrics(str(REPO / "docs/results/reference_gowalla_lightgcn_d64.json"))
  assert 0 < shipped["recall@20"] < 1 and "d=64" in shipped["workdir"]
