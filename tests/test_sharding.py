"""Scaling out (cerp_jax/sharding.py): runs on 1, 4 and 8 fake CPU devices give the same numbers.

Each device count runs in its own process (tests/sharding_worker.py sets
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before importing JAX), so the rest of the
suite stays on one device. The 8-device worker runs first: its killed run's checkpoint is resumed by
the 1- and 4-device workers, and its full-table workdir is evaluated on 1 device.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

from cerp_jax import sharding as shard_lib
from conftest import REPO, synthetic_interactions, write_lightgcn

WORKER = REPO / "tests" / "sharding_worker.py"


def _worker(devices, out, data, scenarios, timeout=240, **kw):
  args = [sys.executable, str(WORKER), f"--devices={devices}", f"--out={out}", f"--data={data}",
          f"--scenarios={scenarios}", *[f"--{k}={v}" for k, v in kw.items()]]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
  assert r.returncode == 0, r.stderr[-4000:]
  return pathlib.Path(out)


def _load(out, name):
  with open(out / f"{name}.json") as f:
    record = json.load(f)
  arrays = dict(np.load(out / f"{name}.npz"))
  return record, arrays


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_lightgcn(tmp_path_factory.mktemp("sharding") / "syn", *synthetic_interactions())


@pytest.fixture(scope="module")
def d8(data_dir):
  return _worker(8, data_dir.parent / "d8", data_dir, "prune,full,eval,kill,rule")


@pytest.fixture(scope="module")
def d1(data_dir, d8):
  return _worker(1, data_dir.parent / "d1", data_dir, "prune,full,eval,resume,report",
                 resume_from=d8 / "kill_wd", eval_workdir=d8 / "full_wd")


@pytest.fixture(scope="module")
def d4(data_dir, d8):
  return _worker(4, data_dir.parent / "d4", data_dir, "resume", resume_from=d8 / "kill_wd")


def _assert_params_close(a, b, atol):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=k)


def _assert_metrics_close(ma, mb, rtol=1e-5):
  assert len(ma) == len(mb) > 0
  for ra, rb in zip(ma, mb):
    assert sorted(ra) == sorted(rb)
    for k, v in ra.items():
      if k.endswith("steps_per_s") or k == "seconds":  # wall-clock speed and time, not results
        continue
      if isinstance(v, float):
        np.testing.assert_allclose(rb[k], v, rtol=rtol, atol=1e-7, err_msg=k)
      else:
        assert rb[k] == v, k


def test_data_parallel_prune_matches_one_device(d1, d8):
  """CERP stage 1, 64 steps: 8 devices on 'data' (10 groups padded to 16) == 1 device."""
  r1, p1 = _load(d1, "prune")
  r8, p8 = _load(d8, "prune")
  _assert_metrics_close(r1["metrics"], r8["metrics"])
  assert r1["metrics"][-1]["prune/nonzeros"] == r8["metrics"][-1]["prune/nonzeros"] < 256
  # Adam normalises near-zero gradients, so reduction-order noise (1e-8) grows to ~5e-6 in 64 steps
  _assert_params_close(p1, p8, atol=3e-5)
  batch = r8["runs"][0]["batch"]  # users [steps, G]: really split along 'data'
  assert batch["spec"] == "P(None, 'data')" and batch["shape"] == [16, 16]
  assert batch["num_shards"] == 8 and batch["shard_shape"] == [16, 2]
  for k, t in r8["runs"][0]["state_out"].items():  # CERP tables: tiny, replicated
    assert t["spec"] == "P()" and t["num_shards"] == 1, k
  assert r1["runs"][0]["batch"]["num_shards"] == 1


def test_data_model_mesh_row_shards_full_table(d1, d8):
  """The full table on a ('data', 'model') = (4, 2) mesh: rows split over 'model', same numbers."""
  r1, p1 = _load(d1, "full")
  r8, p8 = _load(d8, "full")
  run = r8["runs"][0]
  for when in ("state_in", "state_out"):
    e = run[when]["E"]
    assert e["spec"] == "P('model',)" and e["num_shards"] == 2 and e["shard_shape"] == [70, 8]
  assert run["batch"]["num_shards"] == 4 and run["batch"]["shard_shape"] == [8, 16]
  _assert_params_close(p1, p8, atol=1e-6)
  _assert_metrics_close(r1["metrics"], r8["metrics"])
  for k, v in r1["result"]["test"].items():
    if "@" in k:
      assert abs(r8["result"]["test"][k] - v) < 1e-6, k
  assert r1["result"]["best_epoch"] == r8["result"]["best_epoch"]


def test_sharded_evaluation_equals_single_device(d1, d8):
  """Users of each scoring batch split over 8 devices (batch 20 → 24); full table row-sharded."""
  e1, t1 = _load(d1, "eval")
  e8, t8 = _load(d8, "eval")
  assert set(e1) == {"cerp_mf", "cerp_mlp", "full"}
  for case in e1:
    assert e1[case]["batch_size"] == 20
    assert e8[case]["batch_size"] == (24 if case != "full" else 20)  # data axis 8, or 4 × model 2
    for k, v in e1[case].items():
      if "@" in k:
        assert abs(e8[case][k] - v) < 1e-7, (case, k)
    np.testing.assert_array_equal(t1[f"{case}/topk"], t8[f"{case}/topk"])
  assert e8["full"]["tables"]["E"]["spec"] == "P('model',)"
  assert e8["full"]["tables"]["E"]["num_shards"] == 2


def test_checkpoint_from_8_devices_resumes_on_1_and_4(d1, d4, d8):
  """Killed after 32 of 64 steps on 8 devices; restored and finished on 1 and on 4 devices."""
  killed, _ = _load(d8, "kill")
  assert killed["killed"]
  _, straight8 = _load(d8, "prune")
  _, straight1 = _load(d1, "prune")
  for out in (d1, d4):
    r, p = _load(out, "resume")
    assert not r["killed"] and r["runs"][0]["calls"] == 2  # blocks 3 and 4 of 4
    assert r["summary"]["final_step"] == 64
    _assert_params_close(p, straight8, atol=3e-5)
    _assert_params_close(p, straight1, atol=3e-5)
  r4, _ = _load(d4, "resume")
  assert r4["devices"] == 4
  assert r4["runs"][0]["batch"]["shape"] == [16, 12] and r4["runs"][0]["batch"]["num_shards"] == 4


def test_eval_of_8_device_workdir_on_1_device(d1, d8):
  """eval.py's path restores the row-sharded (4 × 2) checkpoint on one device, same test metrics."""
  rep, _ = _load(d1, "report")
  full, _ = _load(d8, "full")
  (row,) = rep["results"]
  assert row["topk_match_packed_vs_dense"]
  for k, v in full["result"]["test"].items():
    if "@" in k:
      assert abs(row[k] - v) < 1e-6, k


def test_train_step_traces_once_per_run(d1, d4, d8):
  for out, names in ((d8, ("prune", "full")), (d1, ("prune", "full", "resume")), (d4, ("resume",))):
    for name in names:
      r, _ = _load(out, name)
      for run in r["runs"]:
        assert run["calls"] >= 2 and run["cache_size"] == 1, (out.name, name, run)


def test_row_sharding_rule(d8):
  rule, _ = _load(d8, "rule")
  assert rule == {"E 140 rows": "P('model',)", "E 141 rows": "P()",  # uneven: replicated, warned
                  "E 32 rows": "P()", "backbone 140 rows": "P()", "embedding 1-D": "P()"}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_on_localhost(data_dir, d1):
  """jax.distributed over 2 local processes × 2 CPU devices (Gloo collectives): the prune run and the
  full table row-sharded across both processes give the 1-device numbers, process 0 alone writes the
  files, evaluation and eval.py's report agree in both processes."""
  out = data_dir.parent / "multi"
  out.mkdir()
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs, logs = [], [out / f"log_{i}.txt" for i in range(2)]
  try:
    for i in range(2):  # output to files: a full pipe would stall one process and both with it
      with open(logs[i], "w") as log:
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), "--devices=2", f"--out={out}", f"--data={data_dir}",
             "--scenarios=multi", f"--process_id={i}", "--num_processes=2",
             f"--coordinator=127.0.0.1:{port}"], cwd=REPO, env=env, stdout=log,
            stderr=subprocess.STDOUT))
    for p in procs:
      p.wait(timeout=240)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log.read_text()[-4000:]
  r, params = _load(out, "multi")
  assert r["devices"] == 4 and r["processes"] == 2
  batch = r["runs"][0]["batch"]
  assert batch["num_shards"] == 4 and batch["shape"] == [16, 12]
  r1, p1 = _load(d1, "prune")
  _assert_metrics_close(r1["metrics"], r["metrics"])
  _assert_params_close(p1, params, atol=3e-5)
  with open(out / "multi_wd" / "metrics.jsonl") as f:
    assert len(f.readlines()) == len(r1["metrics"])  # one writer
  with open(out / "multi_eval_0.json") as f0, open(out / "multi_eval_1.json") as f1:
    assert json.load(f0) == json.load(f1)
  full, full_params = _load(out, "multi_full")
  e = full["runs"][0]["state_out"]["E"]
  assert e["spec"] == "P('model',)" and e["num_shards"] == 2
  f1, fp1 = _load(d1, "full")
  _assert_params_close(fp1, full_params, atol=1e-6)
  for k, v in f1["result"]["test"].items():
    if "@" in k:
      assert abs(full["result"]["test"][k] - v) < 1e-6, k
  with open(out / "multi_report_0.json") as f0, open(out / "multi_report_1.json") as f1:
    rows0, rows1 = json.load(f0), json.load(f1)
  for k in rows0[0]:  # the same report in both processes (timings aside)
    if "seconds" not in k:
      assert rows0[0][k] == rows1[0][k], k
  assert (out / "multi_full_wd" / "eval.json").exists()
  assert (out / "multi_full_wd" / "packed" / "full.cerp").exists()


def test_resolve_mesh_shape():
  assert shard_lib.resolve_mesh_shape((), ("data",), 8) == (8,)
  assert shard_lib.resolve_mesh_shape((), ("data", "model"), 8) == (8, 1)
  assert shard_lib.resolve_mesh_shape((-1, 2), ("data", "model"), 8) == (4, 2)
  with pytest.raises(ValueError, match="needs 6 devices, this run has 8"):
    shard_lib.resolve_mesh_shape((3, 2), ("data", "model"), 8)
  with pytest.raises(ValueError, match="not a multiple of 3"):
    shard_lib.resolve_mesh_shape((-1, 3), ("data", "model"), 8)
  with pytest.raises(ValueError, match="mesh_axes"):
    shard_lib.resolve_mesh_shape((), ("model", "data"), 8)


def test_one_device_plan_and_no_distributed_by_default(test_config, monkeypatch):
  for k in ("JAX_COORDINATOR_ADDRESS", shard_lib.ENV_DISTRIBUTED):
    monkeypatch.delenv(k, raising=False)
  assert not shard_lib.distributed_init(test_config)
  plan = shard_lib.ShardingPlan.from_config(test_config)
  assert plan.data_size == 1 and plan.model_size == 1 and shard_lib.is_primary()
  block = {"users": np.zeros((2, 10), np.int32), "items": np.zeros((2, 10, 6), np.int32),
           "group_mask": np.ones((2, 10), bool), "step_mask": np.ones(2, bool)}
  placed = plan.put_batch(block)
  assert placed["users"].shape == (2, 10)  # nothing to pad on one device


def test_mesh_fields_do_not_block_resume(test_config, tmp_path):
  from cerp_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.check_config(test_config, str(tmp_path))
  test_config.mesh_shape = (4, 2)
  test_config.mesh_axes = ("data", "model")
  test_config.process_id = 1
  workdir_lib.check_config(test_config, str(tmp_path))
  test_config.mesh_shape = (3, 1)  # refused up front on this one device
  with pytest.raises(ValueError, match=r"mesh_shape=\(3, 1\).*needs 3 devices"):
    workdir_lib.validate_config(test_config)
