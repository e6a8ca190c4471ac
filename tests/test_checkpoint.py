"""Checkpoint integrity: digests verified on restore, fallback or error, the NaN/Inf guard, eval.py."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cerp_jax import checkpoint as ckpt_lib
from cerp_jax import finalize
from cerp_jax import loop as loop_lib
from cerp_jax import train as T
from conftest import REPO

# silent_overwrite's failed tries leave TensorStore callbacks into orbax's closed event loop
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _data_files(step_dir, item):
  root = os.path.join(step_dir, item, "ocdbt.process_0", "d")
  return [os.path.join(root, f) for f in os.listdir(root)]


def overwrite_middle(step_dir, item="state", n=64):
  """Overwrites ``n`` bytes in the middle of ``item``'s largest array data file."""
  path = max(_data_files(step_dir, item), key=os.path.getsize)
  with open(path, "r+b") as f:
    f.seek(os.path.getsize(path) // 2)
    f.write(b"\x7f" * n)


def _leaves(step_dir, item):
  tree = ocp.StandardCheckpointer().restore(os.path.join(step_dir, item))
  return {ckpt_lib.leaf_name(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def silent_overwrite(step_dir, item="state", n=64) -> str:
  """Overwrites ``n`` bytes of ``item``'s array data so that orbax alone restores it without a word
  but with changed values (orbax checksums its index, not the array bytes); tries offsets from the
  middle of the largest data file on. Returns the reason the digests must give."""
  want = _leaves(step_dir, item)
  for path in sorted(_data_files(step_dir, item), key=os.path.getsize, reverse=True):
    size = os.path.getsize(path)
    for frac in (0.5, 0.25, 0.75, 0.375, 0.625, 0.125, 0.875):
      off = int(size * frac)
      with open(path, "r+b") as f:
        f.seek(off)
        orig = f.read(n)
        f.seek(off)
        f.write(b"\x7f" * n)
      try:
        got = _leaves(step_dir, item)
        changed = sorted(k for k in want if not np.array_equal(want[k], got[k], equal_nan=True))
      except Exception:  # pylint: disable=broad-except
        changed = []
      if changed:
        more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
        return f"fails its digest ({item} leaf {changed[0]}{more} changed)"
      with open(path, "r+b") as f:
        f.seek(off)
        f.write(orig)
  raise AssertionError(f"no silent overwrite found in {step_dir}/{item}")


def _steps(directory):
  return sorted(int(p) for p in os.listdir(directory) if p.isdigit())


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def _tree(seed):
  rng = np.random.default_rng(seed)
  return {"P": jnp.asarray(rng.normal(size=(64, 32)), jnp.float32), "step": jnp.int32(seed)}


def test_byte_overwrite_falls_back_then_error(tmp_path, caplog):
  store = ckpt_lib.CheckpointStore(tmp_path / "ck")
  store.save(_tree(1), {"epoch": 1})
  store.save(_tree(2), {"epoch": 2})
  reason = silent_overwrite(tmp_path / "ck" / "2")
  store = ckpt_lib.CheckpointStore(tmp_path / "ck")
  state, meta, _ = store.restore(_tree(0))
  assert meta == {"epoch": 1} and int(state["step"]) == 1
  np.testing.assert_array_equal(state["P"], _tree(1)["P"])
  info = store.last_restore
  assert info["fallback"] and info["verified"] and (info["checkpoint"], info["newest"]) == (1, 2)
  assert reason == "fails its digest (state leaf P changed)"
  assert info["message"] == (f"checkpoint 2 in {store.directory} {reason}; restored checkpoint 1 "
                             "instead")
  assert info["message"] in caplog.text
  overwrite_middle(tmp_path / "ck" / "1")
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    store.restore(_tree(0))
  msg = str(e.value)
  assert store.directory in msg and "none of its 2 checkpoint(s) reads and verifies" in msg
  assert "\n" not in msg


def test_checkpoint_without_digests_restores_with_warning(tmp_path, caplog):
  """Checkpoints written before digests were recorded: restored, unverified, with a warning."""
  store = ckpt_lib.CheckpointStore(tmp_path / "ck")
  store.save(_tree(1), {"epoch": 1})
  path = tmp_path / "ck" / "1" / "meta" / "metadata"
  meta = json.loads(path.read_text())
  del meta["_integrity"]
  path.write_text(json.dumps(meta))
  store = ckpt_lib.CheckpointStore(tmp_path / "ck")
  _, meta, _ = store.restore(_tree(0))
  assert meta == {"epoch": 1} and not store.last_restore["verified"]
  assert "has no digests (written before they were recorded); restored unverified" in caplog.text


def test_nonfinite_is_never_saved(tmp_path):
  store = ckpt_lib.CheckpointStore(tmp_path / "ck")
  tree = _tree(1)
  tree["P"] = tree["P"].at[3, 4].set(jnp.inf)
  with pytest.raises(ckpt_lib.CheckpointError, match="refusing to save checkpoint 1: non-finite "
                     "values in state leaf P"):
    store.save(tree, {"epoch": 1})
  assert store.latest() is None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished stage 1 + retrain of one target, with tables large enough (d=32) that orbax
  stores them in plain data files; tests work on copies."""
  from conftest import synthetic_interactions, write_lightgcn  # pylint: disable=g-import-not-at-top
  from configs import test as test_cfg  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("trained")
  c = test_cfg.get_config()
  c.data.path = str(write_lightgcn(root / "syn", *synthetic_interactions()))
  c.model.dim = 32
  c.target_sparsities = (0.25,)
  T.train_and_evaluate(c, str(root / "w"))
  return c, root / "w"


def _copy(trained, tmp_path):
  c, wd = trained
  shutil.copytree(wd, tmp_path / "w")
  return c.copy_and_resolve_references(), tmp_path / "w"


def test_stage1_byte_overwrite_resumes_from_verified_checkpoint(trained, tmp_path):
  c, wd = _copy(trained, tmp_path)
  c.stage = "prune"
  want = json.loads((wd / "prune" / "summary.json").read_text())["targets"]
  ck = wd / "prune" / "checkpoints"
  newest, older = _steps(ck)[-1], _steps(ck)[-2]
  reason = silent_overwrite(ck / str(newest))
  T.train_and_evaluate(c, str(wd))
  fallback = [r for r in _records(wd) if r.get("event") == "checkpoint_fallback"]
  moved = f"{ck}.damaged/{newest}"
  assert fallback == [{"stage": "prune", "event": "checkpoint_fallback", "directory": str(ck),
                       "newest": newest, "restored": older,
                       "skipped": [{"checkpoint": newest, "reason": reason}], "moved_to": [moved]}]
  assert json.loads((wd / "prune" / "summary.json").read_text())["targets"] == want
  # the damaged checkpoint was moved aside (the resumed run's own saves follow the good one)
  assert os.path.isdir(moved) and older in _steps(ck)
  for k in _steps(ck):  # then every checkpoint: one line naming the directory, exit status 2
    overwrite_middle(ck / str(k))
  r = subprocess.run([sys.executable, "train.py", "--config=configs/test.py",
                      f"--config.data.path={c.data.path}", "--config.model.dim=32",
                      "--config.target_sparsities=(0.25,)", "--config.stage=prune",
                      f"--workdir={wd}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  lines = [l for l in r.stderr.splitlines() if not re.match(r"I\d{4} ", l)]
  assert r.returncode == 2 and len(lines) == 1, r.stderr
  assert lines[0].startswith(f"error: cannot restore the train state from {ck}: none of its ")
  assert len(lines[0]) < 1000


def test_eval_fallback_recorded_and_refused_unless_allowed(trained, tmp_path):
  _, wd = _copy(trained, tmp_path)
  ck = wd / "retrain" / "sparsity_0.2500" / "checkpoints"
  newest, older = _steps(ck)[-1], _steps(ck)[-2]
  reason = silent_overwrite(ck / str(newest), "best")
  r = subprocess.run([sys.executable, "eval.py", f"--workdir={wd}"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in r.stderr
  assert (f"error: sparsity_0.2500 was evaluated from checkpoint {older} of {ck}, not the newest "
          f"({newest}: {reason})") in errors[0]
  assert "pass --allow_fallback to accept it" in errors[0]
  row = json.loads((wd / "eval.json").read_text())["results"][0]
  assert row["checkpoint"]["fallback"] and row["checkpoint"]["number"] == older
  out = finalize.evaluate_workdir(str(wd), allow_fallback=True)
  assert out["checkpoint_fallbacks"] == ["sparsity_0.2500"] and out["fallback_allowed"]
  c = out["results"][0]["checkpoint"]
  assert (c["number"], c["newest"], c["fallback"], c["verified"]) == (older, newest, True, True)
  assert out["results"][0]["best_epoch"] == c["best_epoch"]


def test_eval_records_the_checkpoint_without_fallback(trained):
  _, wd = trained
  c = finalize.evaluate_workdir(str(wd))["results"][0]["checkpoint"]
  assert not c["fallback"] and c["verified"] and c["finished"] and c["number"] == c["newest"]
  assert c["best_epoch"] == c["result_json_best_epoch"]


def _inject_nan(monkeypatch, instance, call, seen):
  """Wraps ``train.make_block_fn``: block function number ``instance`` (0 = the first the run
  builds) sets P to NaN before its ``call``-th block; ``seen['step']`` = that block's first step."""
  real, made = T.make_block_fn, []

  def make(*a, **kw):
    fn, calls = real(*a, **kw), [0]
    made.append(fn)
    mine = len(made) - 1 == instance

    def wrapped(state, blk, epoch, consts):
      calls[0] += 1
      if mine and calls[0] == call:
        seen["step"] = int(state.step)
        emb = dict(state.params["embedding"])
        emb["P"] = jnp.full_like(emb["P"], jnp.nan)
        state = state.replace(params={**state.params, "embedding": emb})
      return fn(state, blk, epoch, consts)

    return wrapped

  monkeypatch.setattr(T, "make_block_fn", make)


def test_nan_in_a_parameter_stops_stage1_naming_the_step(test_config, tmp_path, monkeypatch):
  test_config.stage = "prune"
  test_config.checkpoint_every_steps = 16
  seen = {}
  _inject_nan(monkeypatch, 0, 4, seen)
  wd = tmp_path / "w"
  with pytest.raises(loop_lib.NonFiniteError) as e:
    T.train_and_evaluate(test_config, str(wd))
  ck = wd / "prune" / "checkpoints"
  msg = str(e.value)
  assert msg.startswith(f"prune: non-finite loss at step {seen['step']} (bpr_loss nan")
  assert msg.endswith(f"stopped, nothing saved after it (last good checkpoint {_steps(ck)[-1]} "
                      f"in {ck})")
  store = ckpt_lib.CheckpointStore(ck)  # the last checkpoint is from before the NaN, and finite
  assert int(store.restore_meta()["step"]) <= seen["step"]
  assert all(np.isfinite(a).all() for a in _leaves(ck / str(_steps(ck)[-1]), "state").values())
  assert [r for r in _records(wd) if r.get("event") == "non_finite"][0]["step"] == seen["step"]


def test_nan_in_a_parameter_stops_retraining(trained, tmp_path, monkeypatch):
  c, wd = _copy(trained, tmp_path)
  c.stage = "retrain"
  shutil.rmtree(wd / "retrain")
  seen = {}
  _inject_nan(monkeypatch, 0, 2, seen)
  with pytest.raises(loop_lib.NonFiniteError) as e:
    T.train_and_evaluate(c, str(wd))
  ck = wd / "retrain" / "sparsity_0.2500" / "checkpoints"
  want = f"retrain sparsity_0.2500: non-finite loss at step {seen['step']} "
  assert str(e.value).startswith(want)
  assert str(e.value).endswith(f"(no checkpoint saved yet in {ck})")
  assert not _steps(ck) and not (wd / "retrain" / "sparsity_0.2500" / "result.json").exists()


def test_nonfinite_parameter_with_finite_losses_is_named():
  """A parameter no loss of the block touched: named after the block's last step."""
  state = T.TrainState(step=jnp.int32(40), params={"backbone": {"w": jnp.array([1.0, jnp.nan])}},
                       batch_stats={}, masks={}, opt_state=(), rng=jnp.zeros(2, jnp.uint32),
                       prune=None)
  m = {"active": np.array([True, True, False]), "loss": np.array([0.5, 0.4, 0.0]),
       "params_finite": np.bool_(False)}
  assert loop_lib._nonfinite(m, 38, state) == (  # pylint: disable=protected-access
      39, "non-finite parameter params/backbone/w after step 39 (losses of steps 38–39 finite)")
  m["params_finite"] = np.bool_(True)
  assert loop_lib._nonfinite(m, 38, state) is None  # pylint: disable=protected-access
