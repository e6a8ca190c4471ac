"""Runs cerp_jax on N fake CPU devices in a fresh process, for tests/test_sharding.py.

  python tests/sharding_worker.py --devices=8 --out=DIR --data=SYN_DIR --scenarios=prune,full,eval

``XLA_FLAGS=--xla_force_host_platform_device_count=N`` is set here, before JAX is imported, so each
device count lives in its own process and the rest of the suite stays on one device. Every scenario
writes ``DIR/<scenario>.json`` (metrics, shardings seen by the jitted step, compile counts) and
``DIR/<scenario>.npz`` (final parameters / per-user metrics); the test compares device counts.

Scenarios:
  prune   CERP stage 1 (1 epoch: 64 steps of 10 groups), all devices on 'data'.
  full    the full [N, d] table, stage 2 (2 epochs, validation + test evaluation); on 8 devices a
          ('data', 'model') = (4, 2) mesh with the table row-sharded along 'model'.
  eval    sharded evaluation of fixed (seeded) CERP-MF, CERP-MLP and full-table variables.
  kill    the prune scenario, killed after its 2nd checkpoint (step 32 of 64).
  resume  copies --resume_from (a killed workdir) and finishes it on this device count.
  report  copies --eval_workdir (a finished full-table run) and runs eval.py's evaluate_workdir on
          this device count (the stored (4, 2) mesh does not fit: all devices on 'data').
  rule    the row-sharding rule on a (4, 2) mesh for a few leaf paths and shapes.
  multi   one process of a jax.distributed run (--process_id, --num_processes, --coordinator): the
          prune scenario, the full table row-sharded over a (2, 2) mesh spanning both processes,
          eval.py's evaluate_workdir on it, and a sharded evaluation.
"""

import argparse
import json
import os
import shutil
import sys


def _parse():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", type=int, required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--data", required=True)
  p.add_argument("--scenarios", required=True)
  p.add_argument("--resume_from", default="")
  p.add_argument("--eval_workdir", default="")
  p.add_argument("--process_id", type=int, default=-1)
  p.add_argument("--num_processes", type=int, default=0)
  p.add_argument("--coordinator", default="")
  return p.parse_args()


ARGS = _parse()
os.environ["XLA_FLAGS"] = " ".join(
    [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    + [f"--xla_force_host_platform_device_count={ARGS.devices}"])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from cerp_jax import checkpoint as ckpt_lib  # pylint: disable=wrong-import-position
from cerp_jax import data as data_lib  # pylint: disable=wrong-import-position
from cerp_jax import embeddings as emb_lib  # pylint: disable=wrong-import-position
from cerp_jax import evaluation  # pylint: disable=wrong-import-position
from cerp_jax import finalize  # pylint: disable=wrong-import-position
from cerp_jax import models  # pylint: disable=wrong-import-position
from cerp_jax import sharding as shard_lib  # pylint: disable=wrong-import-position
from cerp_jax import train as T  # pylint: disable=wrong-import-position
from configs import test as test_cfg  # pylint: disable=wrong-import-position


class _Killed(Exception):
  pass


class Recorder:
  """Wraps ``train.make_block_fn``: records the shardings the jitted block sees, its compiles."""

  def __init__(self):
    self.runs = []
    self._real = T.make_block_fn
    T.make_block_fn = self._make

  def _make(self, *a, **kw):
    fn = self._real(*a, **kw)
    rec = {"fn": fn, "calls": 0, "last": None}
    self.runs.append(rec)

    def call(state, blk, epoch, consts):
      if rec["calls"] == 0:
        rec["batch"] = _describe(blk["users"])
        rec["state_in"] = _describe_emb(state)
      rec["calls"] += 1
      out = fn(state, blk, epoch, consts)
      rec["last"] = out[0]
      return out

    return call

  def report(self):
    out = []
    for r in self.runs:
      cache_size = r["fn"]._cache_size()  # pylint: disable=protected-access
      out.append({"calls": r["calls"], "cache_size": cache_size,
                  "batch": r.get("batch"), "state_in": r.get("state_in"),
                  "state_out": _describe_emb(r["last"]) if r["last"] is not None else None})
    return out

  def last_params(self):
    return shard_lib.to_host(self.runs[-1]["last"].params)


def _describe(x):
  return {"spec": str(x.sharding.spec), "shape": list(x.shape),
          "num_shards": len({str(s.index) for s in x.global_shards}),
          "shard_shape": list(x.addressable_shards[0].data.shape)}


def _describe_emb(state):
  return {k: _describe(v) for k, v in state.params["embedding"].items()}


def _config(arg="", **mesh):
  c = test_cfg.get_config(arg)
  c.data.path = ARGS.data
  for k, v in mesh.items():
    setattr(c, k, v)
  return c


def _metrics(workdir):
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def _flat(tree, prefix=""):
  out = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    out[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def _save(name, record, arrays):
  if not shard_lib.is_primary():
    return
  with open(os.path.join(ARGS.out, name + ".json"), "w") as f:
    json.dump(record, f, indent=1, default=str)
  np.savez(os.path.join(ARGS.out, name + ".npz"), **arrays)


def _prune_config(mesh=None):
  c = _config(**(mesh or {}))
  c.stage = "prune"
  c.prune.max_epochs = 1  # 64 steps of 10 groups (16 per block): padded to 16 / 12 on 8 / 4 devices
  c.prune.lr = 1e-3  # the paper's; Adam at the test config's 1e-2 turns reduction-order noise in
  # near-zero gradients into lr-sized steps (~1e-3 apart after 64 steps), at 1e-3 they stay ~5e-6
  return c


def scenario_prune(name="prune", kill_at_save=0, workdir=None, config=None):
  rec = Recorder()
  c = config or _prune_config()
  wd = workdir or os.path.join(ARGS.out, name + "_wd")
  killed = False
  if kill_at_save:
    c.checkpoint_every_steps = 16
    real_save, calls = ckpt_lib.CheckpointStore.save, {"n": 0}

    def flaky_save(self, *a, **kw):
      out = real_save(self, *a, **kw)
      calls["n"] += 1
      if calls["n"] == kill_at_save:
        raise _Killed()
      return out

    ckpt_lib.CheckpointStore.save = flaky_save
    try:
      T.train_and_evaluate(c, wd)
    except _Killed:
      killed = True
    finally:
      ckpt_lib.CheckpointStore.save = real_save
  else:
    T.train_and_evaluate(c, wd)
  T.make_block_fn = rec._real  # pylint: disable=protected-access
  summary = None
  if not killed and shard_lib.is_primary():  # process 0 alone writes it
    with open(os.path.join(wd, "prune", "summary.json")) as f:
      summary = json.load(f)
  _save(name, {"devices": jax.device_count(), "processes": jax.process_count(),
               "metrics": _metrics(wd) if shard_lib.is_primary() else None, "summary": summary,
               "killed": killed, "runs": rec.report()},
        _flat(rec.last_params()) if not killed else {})


def scenario_full(name="full", mesh=None):
  if mesh is None and jax.device_count() == 8:
    mesh = dict(mesh_shape=(4, 2), mesh_axes=("data", "model"), shard_embedding_rows_min=64)
  mesh = mesh or {}
  rec = Recorder()
  c = _config("full", **mesh)
  c.retrain.max_epochs = 2
  wd = os.path.join(ARGS.out, name + "_wd")
  out = T.train_and_evaluate(c, wd)
  T.make_block_fn = rec._real  # pylint: disable=protected-access
  _save(name, {"devices": jax.device_count(), "mesh": mesh, "result": out["full"],
               "metrics": _metrics(wd) if shard_lib.is_primary() else None,
               "runs": rec.report()}, _flat(rec.last_params()))
  return wd


def scenario_eval():
  """Seeded, untrained variables: CERP-MF and CERP-MLP on 'data', the full table on data × model."""
  record, arrays = {}, {}
  cases = [("cerp_mf", "", {}), ("cerp_mlp", "", {}), ("full", "full", {})]
  if jax.device_count() == 8:
    cases[2] = ("full", "full", dict(mesh_shape=(4, 2), mesh_axes=("data", "model"),
                                     shard_embedding_rows_min=64))
  for name, arg, mesh in cases:
    c = _config(arg, **mesh)
    if name == "cerp_mlp":
      c.model.backbone = "mlp"
      c.model.mlp_eval_item_chunk = 32
    data = data_lib.load_interactions(c)
    model = models.create_model(c, data, emb_lib.DENSE)
    plan = shard_lib.ShardingPlan.from_config(c)
    v = plan.put(models.init_variables(model, 7, 2))
    ev = evaluation.Evaluator(data, "test", (5, 20), batch_size=20, plan=plan)
    res = ev.evaluate(models.make_score_fn(model, data.num_users), (v, models.make_vectors_fn(model)(v)),
                      return_topk=True)
    record[name] = {k: res[k] for k in res if "@" in k or k == "num_users_evaluated"}
    record[name]["batch_size"] = ev.batch_size
    record[name]["tables"] = {k: _describe(x) for k, x in v["params"]["embedding"].items()}
    arrays[name + "/topk"] = res["topk"]
  _save("eval", record, arrays)


def scenario_resume():
  wd = os.path.join(ARGS.out, "resume_wd")
  shutil.copytree(ARGS.resume_from, wd)
  scenario_prune("resume", workdir=wd)


def scenario_report():
  wd = os.path.join(ARGS.out, "report_wd")
  shutil.copytree(ARGS.eval_workdir, wd)
  out = finalize.evaluate_workdir(wd)  # trained on (4, 2): falls back to all devices on data
  _save("report", {"devices": jax.device_count(), "results": out["results"]}, {})


def scenario_rule():
  plan = shard_lib.ShardingPlan(
      jax.make_mesh((4, 2), ("data", "model"),
                    axis_types=(jax.sharding.AxisType.Auto,) * 2), shard_rows_min=64)
  k = jax.tree_util.DictKey
  cases = {"E 140 rows": ((k("params"), k("embedding"), k("E")), (140, 8)),
           "E 141 rows": ((k("params"), k("embedding"), k("E")), (141, 8)),
           "E 32 rows": ((k("params"), k("embedding"), k("E")), (32, 8)),
           "backbone 140 rows": ((k("params"), k("backbone"), k("kernel")), (140, 8)),
           "embedding 1-D": ((k("params"), k("embedding"), k("b")), (140,))}
  _save("rule", {name: str(plan.spec(path, shape)) for name, (path, shape) in cases.items()}, {})


def scenario_multi():
  shard_lib.distributed_init(_config(distributed=True, coordinator_address=ARGS.coordinator,
                                     num_processes=ARGS.num_processes, process_id=ARGS.process_id))
  scenario_prune("multi")
  # the full table row-sharded over a (2, 2) mesh spanning both processes, then eval.py's path
  wd = scenario_full("multi_full", dict(mesh_shape=(2, 2), mesh_axes=("data", "model"),
                                        shard_embedding_rows_min=64))
  out = finalize.evaluate_workdir(wd)
  with open(os.path.join(ARGS.out, f"multi_report_{jax.process_index()}.json"), "w") as f:
    json.dump(out["results"], f)
  # eval on the global mesh: the same numbers in every process
  c = _config()
  data = data_lib.load_interactions(c)
  model = models.create_model(c, data, emb_lib.DENSE)
  plan = shard_lib.ShardingPlan.from_config(c)
  v = plan.put(models.init_variables(model, 7, 2))
  res = evaluation.Evaluator(data, "test", (5, 20), batch_size=20, plan=plan).evaluate(
      models.make_score_fn(model, data.num_users), (v, models.make_vectors_fn(model)(v)))
  with open(os.path.join(ARGS.out, f"multi_eval_{jax.process_index()}.json"), "w") as f:
    json.dump({k: res[k] for k in res if "@" in k}, f)


def main():
  os.makedirs(ARGS.out, exist_ok=True)
  for s in ARGS.scenarios.split(","):
    if s == "kill":
      scenario_prune("kill", kill_at_save=2)
    else:
      globals()["scenario_" + s]()
  print("worker done", ARGS.devices, ARGS.scenarios, flush=True)


if __name__ == "__main__":
  main()
