import json
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cerp_jax import checkpoint as ckpt_lib
from cerp_jax import data as D
from cerp_jax import embeddings as E
from cerp_jax import models
from cerp_jax import train as T
from conftest import REPO


def _prune_outputs(workdir):
  with open(os.path.join(workdir, "prune", "summary.json")) as f:
    summary = json.load(f)
  return summary


def test_prune_snapshots_exact_across_block_sizes(test_config, tmp_path):
  """Snapshots are captured inside the fused loop: block size must not change step or tables."""
  test_config.stage = "prune"
  outs = []
  for spb in (1, 7, 64):
    c = test_config.copy_and_resolve_references()
    c.prune.steps_per_block = spb
    wd = str(tmp_path / f"spb{spb}")
    T.train_and_evaluate(c, wd)
    data = D.load_interactions(c)
    ps, summary = T.load_prune_results(c, data, wd)
    outs.append((summary, ps))
  for summary, ps in outs[1:]:
    assert [t["step"] for t in summary["targets"]] == [t["step"] for t in outs[0][0]["targets"]]
    for k in ps.snapshots:
      np.testing.assert_array_equal(ps.snapshots[k], outs[0][1].snapshots[k])
  summary, ps = outs[0]
  assert all(t["reached"] for t in summary["targets"])
  for i, t in enumerate(summary["targets"]):
    nnz = sum(int(np.count_nonzero(ps.snapshots[k][i])) for k in ps.snapshots)
    assert nnz == t["nonzeros"] <= t["budget"] < summary["num_entries"]
  # the step-0 tables are the untouched initial values (not soft-thresholded)
  assert np.count_nonzero(ps.initial["P"]) == ps.initial["P"].size


class _Killed(Exception):
  pass


@pytest.mark.parametrize("kill_at_save", [2, 9])
def test_resume_continues_exactly(test_config, tmp_path, monkeypatch, kill_at_save):
  """N steps straight == k steps, kill, restore, N − k steps (prune and retrain)."""
  straight = str(tmp_path / "straight")
  T.train_and_evaluate(test_config.copy_and_resolve_references(), straight)

  c = test_config.copy_and_resolve_references()
  c.checkpoint_every_steps = 40
  resumed = str(tmp_path / "resumed")
  real_save = ckpt_lib.CheckpointStore.save
  calls = {"n": 0}

  def flaky_save(self, *a, **kw):
    out = real_save(self, *a, **kw)
    calls["n"] += 1
    if calls["n"] == kill_at_save:
      raise _Killed()
    return out

  monkeypatch.setattr(ckpt_lib.CheckpointStore, "save", flaky_save)
  with pytest.raises(_Killed):
    T.train_and_evaluate(c, resumed)
  monkeypatch.setattr(ckpt_lib.CheckpointStore, "save", real_save)
  T.train_and_evaluate(c, resumed)

  assert _prune_outputs(straight)["targets"] == _prune_outputs(resumed)["targets"]
  for tag in os.listdir(os.path.join(straight, "retrain")):
    a = json.load(open(os.path.join(straight, "retrain", tag, "result.json")))
    b = json.load(open(os.path.join(resumed, "retrain", tag, "result.json")))
    assert a["history"] == b["history"] and a["test"]["ndcg@20"] == b["test"]["ndcg@20"]
    assert a["best_epoch"] == b["best_epoch"] and a["steps"] == b["steps"]


def test_block_fn_traces_once(test_config):
  data = D.load_interactions(test_config)
  model = models.create_model(test_config, data, E.PRUNE)
  tx = T.make_optimizer(test_config.prune)
  sc = T.StepConfig(eta=100.0, gamma_init=1.0, gamma_decay=0.5, l2_penalty=0.0, prune=True)
  fn = T.make_block_fn(model, tx, sc)
  variables = models.init_variables(model, 0, 6)
  params = variables["params"]
  from cerp_jax import pruning
  tables = model.apply(variables, method=models.Recommender.tables)
  state = T.TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={}, masks={},
                       opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)),
                       prune=pruning.init_prune_state(np.array([10, 5]), tables,
                                                      {k: jnp.copy(params["embedding"][k])
                                                       for k in ("P", "Q")}))
  from cerp_jax import sampler as S
  s = S.BPRSampler(data.train, 5, seed=0)
  for epoch in range(2):
    blocks, _ = S.to_steps(*s.epoch(epoch), 10, 8)
    for i in range(blocks["users"].shape[0]):
      state, _ = fn(state, {k: v[i] for k, v in blocks.items()}, jnp.int32(epoch), {})
  assert fn._cache_size() == 1


def test_bucket_collision_refused_before_writing(test_config, tmp_path):
  test_config.model.bucket_size = 4  # N = 140 needs b ≥ 12
  wd = tmp_path / "never"
  with pytest.raises(E.BucketSizeError, match="smallest valid b is 12"):
    T.train_and_evaluate(test_config, str(wd))
  assert not wd.exists()


def test_bad_config_values(test_config, tmp_path):
  test_config.stage = "pruen"
  with pytest.raises(ValueError, match="config.stage='pruen'"):
    T.train_and_evaluate(test_config, str(tmp_path / "x"))


def test_unknown_config_field_refused(tmp_path):
  r = subprocess.run([sys.executable, "train.py", "--config=configs/test.py",
                      "--config.model.bucket_sise=3", f"--workdir={tmp_path / 'w'}"], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert "bucket_sise" in r.stderr
  assert not (tmp_path / "w").exists()


def test_workdir_with_other_config_refused(test_config, tmp_path):
  test_config.stage = "prune"
  T.train_and_evaluate(test_config, str(tmp_path / "w"))
  test_config.model.dim = 4
  with pytest.raises(ValueError, match="different config"):
    T.train_and_evaluate(test_config, str(tmp_path / "w"))


def _corrupt(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\0garbage")


def test_corrupt_checkpoint_falls_back_then_clear_error(test_config, tmp_path, caplog):
  test_config.stage = "prune"
  wd = tmp_path / "w"
  T.train_and_evaluate(test_config, str(wd))
  want = _prune_outputs(wd)["targets"]
  ck = wd / "prune" / "checkpoints"
  steps = sorted(int(p.name) for p in ck.iterdir() if p.name.isdigit())
  assert len(steps) >= 2
  _corrupt(ck / str(steps[-1]))
  data = D.load_interactions(test_config)
  # the newest checkpoint is damaged: the previous one is used and stage 1 is redone to the same end
  T.train_and_evaluate(test_config, str(wd))
  assert "is unreadable" in caplog.text
  assert _prune_outputs(wd)["targets"] == want
  for p in ck.iterdir():
    if p.name.isdigit():
      _corrupt(p)
  with pytest.raises(ckpt_lib.CheckpointError, match="cannot restore the train state"):
    T.load_prune_results(test_config, data, str(wd))


def test_retrain_without_stage1_clear_error(test_config, tmp_path):
  test_config.stage = "retrain"
  with pytest.raises(ckpt_lib.CheckpointError, match="no finished stage 1"):
    T.train_and_evaluate(test_config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_mlp_backbone_trains_and_never_nans(test_config, tmp_path):
  test_config.model.backbone = "mlp"
  test_config.retrain.groups_per_step = 10
  test_config.retrain.num_negatives = 5
  test_config.prune.max_epochs = 3
  test_config.target_sparsities = (0.05,)
  out = T.train_and_evaluate(test_config, str(tmp_path / "w"))
  r = out["sparsity_0.0500"]
  assert np.isfinite(r["test"]["ndcg@20"])
  # a fully pruned pair gives input 0, never NaN
  mlp = models.NCFMLP()
  z = jnp.zeros((3, 8))
  v = mlp.init(jax.random.key(0), z, z)
  s = mlp.apply(v, z, z)
  assert np.all(np.isfinite(s))


@pytest.mark.parametrize("field,value,match", [
    ("model.backbone", "mlpp", "config.model.backbone='mlpp'"),
    ("model.embedding", "cerpp", "config.model.embedding='cerpp'"),
    ("sampling.mode", "resampel", "config.sampling.mode='resampel'"),
    ("model.combine", "summ", "config.model.combine='summ'"),
    ("model.dim", 0, "config.model.dim=0"),
    ("eval.report", "bestt", "config.eval.report='bestt'"),
    ("eval.selection_metric", "ndcg@abc", "selection_metric='ndcg@abc'"),
    ("eval.ks", (5, 20, 500), "K=500 exceeds the 80 items"),
    ("data.valid_fraction", 1.5, "valid_fraction=1.5"),
    ("retrain.ticket", "rand", "config.retrain.ticket='rand'"),
])
def test_config_typos_refused_before_writing(test_config, tmp_path, field, value, match):
  node = test_config
  *path, last = field.split(".")
  for p in path:
    node = getattr(node, p)
  setattr(node, last, value)
  wd = tmp_path / "w"
  with pytest.raises(ValueError, match=match):
    T.train_and_evaluate(test_config, str(wd))
  assert not wd.exists()


def test_no_target_reached_is_an_error(test_config, tmp_path):
  test_config.target_sparsities = (0.95,)
  test_config.prune.max_epochs = 1
  with pytest.raises(T.NoTargetReachedError, match="reached none of the targets"):
    T.train_and_evaluate(test_config, str(tmp_path / "w"))
  summary = _prune_outputs(tmp_path / "w")
  assert summary["targets"][0]["reached"] is False and summary["targets"][0]["nonzeros"] is None


def test_cli_prints_clear_error_without_traceback(tmp_path):
  r = subprocess.run([sys.executable, "train.py", "--config=configs/test.py",
                      f"--config.data.path={tmp_path / 'missing'}", f"--workdir={tmp_path / 'w'}"],
                     cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert "error:" in r.stderr and "train.txt: file not found" in r.stderr
  assert "Traceback" not in r.stderr


def test_retrain_from_another_workdirs_stage1(test_config, tmp_path):
  a, b = tmp_path / "a", tmp_path / "b"
  c1 = test_config.copy_and_resolve_references()
  c1.stage = "prune"
  T.train_and_evaluate(c1, str(a))
  c2 = test_config.copy_and_resolve_references()
  c2.stage = "retrain"
  c2.prune_workdir = str(a)
  c2.retrain.max_epochs = 2  # another retraining protocol, same stage 1
  out = T.train_and_evaluate(c2, str(b))
  assert set(out) == {"sparsity_0.2500", "sparsity_0.4000"}
  assert not (b / "prune").exists() and (b / "retrain" / "sparsity_0.2500" / "result.json").exists()
  c3 = c2.copy_and_resolve_references()
  c3.model.dim = 4
  with pytest.raises(ValueError, match=r"other stage-1 settings \(model.dim: 8 → 4\)"):
    T.train_and_evaluate(c3, str(tmp_path / "c"))
  # One stage 1 for several budgets: a run retraining a subset of its targets gets the same result.
  c4 = c2.copy_and_resolve_references()
  c4.target_sparsities = (0.4,)
  out4 = T.train_and_evaluate(c4, str(tmp_path / "d"))
  assert set(out4) == {"sparsity_0.4000"}
  drop_time = lambda r: {k: v for k, v in r["test"].items() if k != "seconds"}
  assert drop_time(out4["sparsity_0.4000"]) == drop_time(out["sparsity_0.4000"])
  c5 = c2.copy_and_resolve_references()
  c5.target_sparsities = (0.3,)
  with pytest.raises(ValueError, match=r"stage 1 ran for target sparsities \[0.25, 0.4\], not \[0.3\]"):
    T.train_and_evaluate(c5, str(tmp_path / "e"))


def test_random_ticket_keeps_counts_and_initial_values():
  rng = np.random.default_rng(0)
  initial = {k: rng.normal(size=(16, 8)).astype(np.float32) for k in ("P", "Q")}
  snaps = {k: (initial[k] * (rng.random((16, 8)) < 0.3))[None] for k in ("P", "Q")}
  ps = types.SimpleNamespace(reached=np.array([True]), snapshots=snaps, initial=initial)
  variables = {"params": {"embedding": {k: np.zeros((16, 8), np.float32) for k in ("P", "Q")}}}
  summary = {"targets": [{"target_sparsity": 0.7, "step": 5}]}
  ticket = lambda kind, seed: T._lottery_ticket(variables, 0.7, ps, summary, kind, seed)
  snap_v, snap_info = ticket("snapshot", 0)
  rand_v, rand_info = ticket("random", 0)
  assert (snap_info["ticket"], rand_info["ticket"]) == ("snapshot", "random")
  for k in ("P", "Q"):
    snap_mask, rand_mask = (np.asarray(v["masks"]["embedding"][k]) for v in (snap_v, rand_v))
    np.testing.assert_array_equal(snap_mask, snaps[k][0] != 0)
    assert rand_mask.sum() == snap_mask.sum() and (rand_mask != snap_mask).any()
    np.testing.assert_array_equal(rand_v["params"]["embedding"][k], initial[k] * rand_mask)
  again, _ = ticket("random", 0)
  other, _ = ticket("random", 1)
  np.testing.assert_array_equal(again["masks"]["embedding"]["P"], rand_v["masks"]["embedding"]["P"])
  assert (np.asarray(other["masks"]["embedding"]["P"]) !=
          np.asarray(rand_v["masks"]["embedding"]["P"])).any()


def test_random_ticket_retrains_from_another_workdirs_stage1(test_config, tmp_path):
  c1 = test_config.copy_and_resolve_references()
  c1.stage = "prune"
  T.train_and_evaluate(c1, str(tmp_path / "a"))
  c2 = c1.copy_and_resolve_references()
  c2.stage, c2.prune_workdir, c2.retrain.max_epochs = "retrain", str(tmp_path / "a"), 2
  c2.retrain.ticket = "random"
  out = T.train_and_evaluate(c2, str(tmp_path / "b"))
  for tag, res in out.items():
    assert res["snapshot"]["ticket"] == "random", tag
    assert np.isfinite(res["test"]["recall@20"])


@pytest.mark.parametrize("field,off,on", [("threshold_weight_decay", -1.0, 0.05),
                                          ("gk_ramp_steps", 0, 20)])
def test_fast_mlp_knobs_reach_budgets_sooner(test_config, tmp_path, field, off, on):
  """The NCF-MLP :fast preset's two knobs, each alone: a larger coupled decay on the thresholds only,
  and the ramp gk = 1 + step/ramp. The same run with the knob on meets every budget earlier, and its
  snapshots hold exactly the non-zeros the (ramped) forward counted, within budget."""
  test_config.stage = "prune"
  steps = {}
  for value in (off, on):
    c = test_config.copy_and_resolve_references()
    setattr(c.prune, field, value)
    wd = str(tmp_path / f"{field}{value}")
    T.train_and_evaluate(c, wd)
    summary = _prune_outputs(wd)
    assert all(t["reached"] for t in summary["targets"])
    ps, _ = T.load_prune_results(c, D.load_interactions(c), wd)
    for i, t in enumerate(summary["targets"]):
      assert sum(int(np.count_nonzero(ps.snapshots[k][i])) for k in ps.snapshots) == t["nonzeros"]
      assert t["nonzeros"] <= t["budget"]
    steps[value] = [t["step"] for t in summary["targets"]]
  assert steps[on][-1] < steps[off][-1], steps


def test_threshold_multiplier_ramp():
  assert float(T.threshold_multiplier(jnp.int32(7), 0)) == 1.0
  np.testing.assert_allclose(float(T.threshold_multiplier(jnp.int32(0), 100)), 1.0)
  np.testing.assert_allclose(float(T.threshold_multiplier(jnp.int32(250), 100)), 3.5)


def test_bad_gk_ramp_refused(test_config, tmp_path):
  test_config.prune.gk_ramp_steps = -5
  with pytest.raises(ValueError, match="gk_ramp_steps=-5"):
    T.train_and_evaluate(test_config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
  with pytest.raises(TypeError):  # ml_collections keeps the field an int
    test_config.prune.gk_ramp_steps = 2.5


@pytest.mark.parametrize("timing,epochs,steps", [
    ("end", [1, 3, 4], lambda s: [2 * s, 4 * s, 5 * s]),
    ("start", [0, 2, 4], lambda s: [0, 2 * s, 4 * s]),
    ("first_step", [0, 2, 4], lambda s: [1, 2 * s + 1, 4 * s + 1]),
])
def test_eval_timing(test_config, tmp_path, timing, epochs, steps):
  """'end' evaluates after epochs every−1, …, and the cap; 'start' / 'first_step' (the authors'
  LightGCN / NCF code) before / after the first step of epochs 0, every, …, and stop after the last
  evaluation within the cap."""
  c = test_config.copy_and_resolve_references()
  c.model.embedding = "full"
  c.retrain.max_epochs = 5
  c.eval.patience = 10
  c.eval.timing = timing
  T.train_and_evaluate(c, str(tmp_path))
  tag = os.listdir(os.path.join(tmp_path, "retrain"))[0]
  r = json.load(open(os.path.join(tmp_path, "retrain", tag, "result.json")))
  spe = r["steps_per_epoch"]
  assert [h["epoch"] for h in r["history"]] == epochs
  assert [h["step"] for h in r["history"]] == steps(spe)
  assert r["steps"] == steps(spe)[-1]


def test_cosine_learning_rate_schedule():
  oc = ml_collections.ConfigDict({"lr": 1e-2, "max_epochs": 10, "lr_schedule": "cosine",
                                  "lr_warmup_epochs": 0.0, "lr_decay_epochs": 0.0,
                                  "lr_final_fraction": 0.1})
  lr = T.learning_rate(oc, steps_per_epoch=4)  # 40 steps to the end of the decay
  np.testing.assert_allclose([lr(0), lr(20), lr(40), lr(80)], [1e-2, 5.5e-3, 1e-3, 1e-3],
                             rtol=1e-5)
  oc.lr_warmup_epochs, oc.lr_decay_epochs = 1.0, 5.0
  lr = T.learning_rate(oc, steps_per_epoch=4)  # warm-up over 4 steps, at lr·0.1 from step 20
  np.testing.assert_allclose([lr(0), lr(2), lr(4), lr(20), lr(30)], [0, 5e-3, 1e-2, 1e-3, 1e-3],
                             rtol=1e-5, atol=1e-9)
  oc.lr_schedule = "constant"
  assert T.learning_rate(oc) == 1e-2


@pytest.mark.parametrize("field,value,match", [
    ("lr_schedule", "cosin", "retrain.lr_schedule='cosin'"),
    ("lr_final_fraction", 1.5, "lr_final_fraction=1.5"),
    ("lr_decay_epochs", -1.0, "lr_decay_epochs=-1.0"),
])
def test_bad_schedule_refused_before_writing(test_config, tmp_path, field, value, match):
  setattr(test_config.retrain, field, value)
  with pytest.raises(ValueError, match=match):
    T.train_and_evaluate(test_config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_cosine_schedule_trains_and_resumes_exactly(test_config, tmp_path, monkeypatch):
  """A cosine-scheduled full table: a run killed after a checkpoint resumes to the same result."""
  c = test_config.copy_and_resolve_references()
  c.model.embedding = "full"
  c.retrain.lr_schedule, c.retrain.lr = "cosine", 1e-2
  ref = T.train_and_evaluate(c, str(tmp_path / "ref"))["full"]
  c.checkpoint_every_steps = 5
  real_save = ckpt_lib.CheckpointStore.save
  calls = {"n": 0}

  def flaky_save(self, *a, **kw):
    out = real_save(self, *a, **kw)
    calls["n"] += 1
    if calls["n"] == 2:
      raise _Killed()
    return out

  monkeypatch.setattr(ckpt_lib.CheckpointStore, "save", flaky_save)
  with pytest.raises(_Killed):
    T.train_and_evaluate(c, str(tmp_path / "cut"))
  monkeypatch.setattr(ckpt_lib.CheckpointStore, "save", real_save)
  got = T.train_and_evaluate(c, str(tmp_path / "cut"))["full"]
  assert got["history"] == ref["history"] and got["test"]["ndcg@20"] == ref["test"]["ndcg@20"]


def test_test_curve_changes_nothing_but_the_records(test_config, tmp_path):
  """eval.test_curve adds test metrics and wall seconds to each evaluation record; selection and the
  result's metrics are those of the run without it."""
  c = test_config.copy_and_resolve_references()
  c.model.embedding = "full"
  c.eval.patience = 10
  plain = T.train_and_evaluate(c, str(tmp_path / "plain"))["full"]
  c.eval.test_curve = True
  curve = T.train_and_evaluate(c, str(tmp_path / "curve"))["full"]
  assert curve["history"] == plain["history"] and curve["test"]["recall@20"] == plain["test"][
      "recall@20"]
  recs = [json.loads(l) for l in open(tmp_path / "curve" / "metrics.jsonl")]
  evals = [r for r in recs if r.get("stage") == "retrain" and "valid/recall@20" in r]
  assert len(evals) == len(curve["history"])
  assert all("test/recall@20" in r and r["seconds"] > 0 for r in evals)
  assert [r["seconds"] for r in evals] == sorted(r["seconds"] for r in evals)
  best = [r for r in evals if r["epoch"] == curve["best_epoch"]][0]
  assert best["test/recall@20"] == pytest.approx(curve["test"]["recall@20"], rel=1e-6)
