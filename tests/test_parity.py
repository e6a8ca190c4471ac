"""The parity harness's own parts (benchmarks/parity/): export round trip, log parsers, table.

No original code, no torch, no network: the export is read back with cerp_jax's reader and pickle.
"""

import math
import pickle

import numpy as np
import scipy.sparse as sp

from benchmarks.parity import export
from benchmarks.parity import original
from benchmarks.parity import table
from cerp_jax import data as data_lib
from cerp_jax import sampler as sampler_lib


def _split(seed=0, nu=30, ni=40):
  rng = np.random.default_rng(seed)
  m = sp.csr_matrix((rng.random((nu, ni)) < 0.25).astype(np.float32))
  m[0, 0] = 1.0  # every user has a training item
  m.eliminate_zeros()
  return data_lib.split_per_user(m.tocsr(), 0.2, seed, min_items=2)


def _pairs(m):
  c = m.tocoo()
  return sorted(zip(c.row.tolist(), c.col.tolist()))


def test_export_round_trips_to_the_same_pairs(tmp_path):
  train, test = _split()
  s = sampler_lib.BPRSampler(train, 5, "fixed", "parity", seed=3)
  users, items = s.epoch(0)
  counts = export.export_split(train, test, users, items, tmp_path / "cerp", tmp_path / "lgn")
  for name, m in (("train", train), ("test", test)):
    back = data_lib.read_lightgcn_file(tmp_path / "lgn" / f"{name}.txt")
    assert sorted(zip(back.users.tolist(), back.items.tolist())) == _pairs(m)
    assert counts[name] == m.nnz
  full = sp.load_npz(tmp_path / "cerp" / "interact_mat.npz")
  assert _pairs(full) == sorted(_pairs(train) + _pairs(test))
  with open(tmp_path / "cerp" / "train_all_pos.pickle", "rb") as f:
    all_pos = pickle.load(f)
  assert len(all_pos) == train.shape[0]
  assert sorted((u, int(i)) for u, a in enumerate(all_pos) for i in a) == _pairs(train)
  u2, i2 = export.read_samples(tmp_path / "cerp" / "train_samples.pickle")
  np.testing.assert_array_equal(u2, users)  # same groups, same order
  np.testing.assert_array_equal(i2, items)
  adj = sp.load_npz(tmp_path / "lgn" / "s_pre_adj_mat.npz")
  nu = train.shape[0]
  assert adj.shape == (nu + train.shape[1],) * 2
  assert abs(adj - adj.T).max() < 1e-6
  assert _pairs(adj[:nu, nu:]) == _pairs(train)


def test_normalized_adjacency_matches_the_formula():
  r = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], np.float32))
  a = export.normalized_adjacency(r).toarray()
  # user 0 has degree 2, item 1 degree 2: entry 1/sqrt(2·2)
  assert math.isclose(a[0, 2 + 1], 0.5, rel_tol=1e-6)
  assert math.isclose(a[1, 2 + 1], 1 / math.sqrt(2), rel_tol=1e-6)
  assert a[4].sum() == 0  # item 2 has no edge


def test_samples_dict_refuses_repeated_keys():
  try:
    export.samples_dict(np.array([1, 1]), np.array([[2, 3], [2, 4]]))
  except ValueError:
    return
  raise AssertionError("repeated key accepted")


def test_log_parsers():
  prune_log = ("[Epoch 0|Step 100|Flag 0|Sparsity 0.1011|Params 117822| Avg …]\n"
               "Reach the target parameter at step 5123: 65536, target sparsity: 0.5000,\n"
               "[Epoch 1|Step 0|Flag 0|Sparsity 0.5100|Params 64000| Avg …]\n")
  p = original.parse_prune_log(prune_log, steps_per_epoch=4071)
  assert p["trajectory"] == [(101, 0.1011), (4072, 0.51)]
  assert p["snapshots"] == {0.5: 5123}
  mlp_log = ("epoch\tndcg_5\n\nrecalls: [0.1, 0.2, 0.3, 0.4], ndcgs: [0.5, 0.6, 0.7, 0.8]\n"
             "0\t0.5\t\n\n\nrecalls: [0.11, 0.21, 0.31, 0.41], ndcgs: [0.5, 0.6, 0.7, 0.8]\n5\t")
  mlp_log = mlp_log.replace("[0.1, 0.2,", "[np.float64(0.1), np.float64(0.2),")  # numpy 2 repr
  h = original.parse_mlp_retrain_log(mlp_log)
  assert [x["epoch"] for x in h] == [0, 5] and h[1]["recall@20"] == 0.31 and h[0]["ndcg@20"] == 0.7
  lgn_log = ("k values: [5, 10, 20, 50]\n[Epoch 11] | [{'recall': [0.1, 0.2, 0.3, 0.4], "
             "'ndcg': [0.5, 0.6, 0.7, 0.8]}]\n")
  g = original.parse_lightgcn_retrain_log(lgn_log)
  assert g == [{"epoch": 10, "recall@5": 0.1, "recall@10": 0.2, "recall@20": 0.3, "recall@50": 0.4,
                "ndcg@5": 0.5, "ndcg@10": 0.6, "ndcg@20": 0.7, "ndcg@50": 0.8}]


def test_agreement_rule():
  assert table.pooled_std(0.0, 1, 0.01, 3) == 0.01
  assert table.agrees(0.30, 0.0, 1, 0.31, 0.01, 3)        # within 2 pooled sd
  assert table.agrees(0.300, 0.0, 1, 0.305, 0.0, 3)       # within 3 % relative
  assert not table.agrees(0.20, 0.0, 1, 0.31, 0.01, 3)
  assert table.agrees(math.nan, 0.0, 1, 0.3, 0.0, 3) is None


def _write_run(wd, backbone, seed, recall, step):
  d = wd / "cerp_jax" / backbone / f"seed{seed}"
  (d / "prune").mkdir(parents=True)
  (d / "prune" / "summary.json").write_text(
      '{"seconds": 10.0, "targets": [{"target_sparsity": 0.5, "step": %d}]}' % step)
  r = d / "retrain" / "sparsity_0.5000"
  r.mkdir(parents=True)
  r.joinpath("result.json").write_text(
      '{"seconds": 5.0, "test": {"recall@20": 0, "ndcg@20": 0}, '
      '"test_per_metric_max": {"recall@20": %f, "ndcg@20": %f}}' % (recall, recall / 2))
  (d / "metrics.jsonl").write_text('{"stage": "prune", "step": 10, "prune/sparsity": 0.2}\n')


def test_table_builder_rows_csv_and_markdown(tmp_path):
  wd = tmp_path / "wd"
  for seed, rec, step in ((1, 0.30, 100), (2, 0.32, 120), (3, 0.31, 110)):
    _write_run(wd, "mlp", seed, rec, step)
  o = wd / "original" / "mlp"
  o.mkdir(parents=True)
  (o / "prune.json").write_text('{"seconds": 50.0, "seed": 1, "snapshots": {"0.5": 105}, '
                                '"trajectory": [[1, 0.1], [105, 0.5]]}')
  (o / "retrain_0.5000.json").write_text(
      '{"seconds": 9.0, "history": [{"epoch": 0, "recall@20": 0.2, "ndcg@20": 0.1}, '
      '{"epoch": 5, "recall@20": 0.305, "ndcg@20": 0.16}]}')
  rows = table.collect(wd, ["mlp"], [0.5], {}, {"mlp": {0.5: 26}})
  o_row, c_row = rows[0], rows[1]
  assert o_row["side"] == "original" and o_row["recall@20_mean"] == 0.305
  assert o_row["snapshot_step"] == 105 and o_row["stage1_s"] == 50.0
  assert c_row["seeds"] == "1;2;3" and math.isclose(c_row["recall@20_mean"], 0.31)
  assert math.isclose(c_row["recall@20_std"], 0.01) and c_row["snapshot_step"] == 110
  assert [r["method"] for r in rows[2:]] == ["full_d64", "full_d26"]
  assert math.isnan(rows[2]["recall@20_mean"])  # not run: NaN, written as empty
  v = table.verdicts(rows)[0]
  assert v["recall@20"] and v["ndcg@20"]
  table.write_csv(rows, tmp_path / "p.csv")
  back = table.read_csv(tmp_path / "p.csv")
  assert [r["side"] for r in back] == [r["side"] for r in rows]
  assert back[1]["recall@20_mean"] == c_row["recall@20_mean"] and math.isnan(back[2]["ndcg@20_std"])
  md = table.markdown(rows)
  assert "| mlp | 0.5 | original | cerp | 1 | 0.3050 ± 0.0000 |" in md
  assert "| mlp | 0.5 | yes | yes |" in md
  tr = table.trajectories(wd, "mlp")
  assert tr["original"] == {"1": [[1, 0.1], [105, 0.5]]} and tr["cerp_jax"]["seed1"] == [(10, 0.2)]
  # a second seed of the original (its own folder) joins the original's row
  o2 = wd / "original" / "mlp_seed2"
  o2.mkdir(parents=True)
  (o2 / "prune.json").write_text('{"seconds": 70.0, "seed": 2, "snapshots": {"0.5": 115}, '
                                 '"trajectory": [[1, 0.1], [115, 0.5]]}')
  (o2 / "retrain_0.5000.json").write_text(
      '{"seconds": 9.0, "history": [{"epoch": 0, "recall@20": 0.295, "ndcg@20": 0.15}]}')
  o_row = table.collect(wd, ["mlp"], [0.5], {}, {"mlp": {0.5: 26}})[0]
  assert o_row["seeds"] == "1;2" and math.isclose(o_row["recall@20_mean"], 0.30)
  assert o_row["snapshot_step"] == 110 and o_row["stage1_s"] == 60.0
  assert set(table.trajectories(wd, "mlp")["original"]) == {"1", "2"}
  # stage-1 seconds of a budget only from the seeds that reached it
  (o2 / "prune.json").write_text('{"seconds": 70.0, "seed": 2, "snapshots": {}}')
  o_row = table.collect(wd, ["mlp"], [0.5], {}, {"mlp": {0.5: 26}})[0]
  assert o_row["stage1_s"] == 50.0 and o_row["snapshot_step"] == 105


def test_random_ticket_row_reads_its_stage1_through_prune_workdir(tmp_path):
  wd = tmp_path / "wd"
  _write_run(wd, "lightgcn", 1, 0.30, 100)
  assert [r["method"] for r in table.collect(wd, ["lightgcn"], [0.5], {}, {"lightgcn": {0.5: 26}})
          ] == ["cerp", "cerp", "full_d64", "full_d26"]  # no control run: no row
  d = wd / "random_ticket" / "lightgcn" / "seed1"
  (d / "retrain" / "sparsity_0.5000").mkdir(parents=True)
  (d / "config.json").write_text('{"prune_workdir": "%s", "model": {"dim": 64}}'
                                 % (wd / "cerp_jax" / "lightgcn" / "seed1"))
  (d / "retrain" / "sparsity_0.5000" / "result.json").write_text(
      '{"seconds": 4.0, "test": {"recall@20": 0.21, "ndcg@20": 0.11}}')
  rows = table.collect(wd, ["lightgcn"], [0.5], {}, {"lightgcn": {0.5: 26}})
  ctrl = next(r for r in rows if r["method"] == "random_ticket")
  assert rows.index(ctrl) == 2 and ctrl["side"] == "cerp_jax" and ctrl["seeds"] == "1"
  assert ctrl["recall@20_mean"] == 0.21 and ctrl["snapshot_step"] == 100  # the shared stage 1's
  assert ctrl["stage2_s"] == 4.0 and ctrl["packed_bytes"] == rows[1]["packed_bytes"]
  assert [v["backbone"] for v in table.verdicts(rows)] == ["lightgcn"]  # CERP rows only


def test_report_header_states_the_changed_settings(tmp_path):
  wd = tmp_path / "wd"
  _write_run(wd, "mlp", 1, 0.30, 100)
  rows = table.collect(wd, ["mlp"], [0.5], {}, {"mlp": {0.5: 26}})
  settings = {"threshold_init": -8.0, "prune_lr": 0.01, "prune_weight_decay": 0.001,
              "mlp_retrain_groups": 50, "prune_max_epochs": 8, "mlp_retrain_epochs": 6,
              "lightgcn_retrain_epochs": 21, "gamma_init": 1.0}
  table.write(rows, tmp_path / "out", settings, wd)
  head = (tmp_path / "out" / "parity.md").read_text()
  assert "thresholds start at -8.0" in head and "γ₀" not in head  # the paper's γ₀: not a change
  (tmp_path / "out" / "parity.md").write_text(head + "\nmy notes\n")
  table.write(rows, tmp_path / "out", {**settings, "gamma_init": 0.01}, wd)
  head = (tmp_path / "out" / "parity.md").read_text()
  assert "regularizer weight γ₀ 0.01" in head and head.endswith("my notes\n")  # notes kept
  assert (tmp_path / "out" / "parity.png").stat().st_size > 0
