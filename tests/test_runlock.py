"""One run per workdir (cerp_jax/runlock.py), one-line OS errors, and the dropout stream."""

import errno
import os
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from cerp_jax import data as D
from cerp_jax import embeddings as E
from cerp_jax import models
from cerp_jax import cli
from cerp_jax import pruning
from cerp_jax import runlock
from cerp_jax import sampler as S
from cerp_jax import train as T
from cerp_jax import workdir as workdir_lib
from conftest import REPO

HOLDER = ("import sys, time; sys.path.insert(0, {repo!r})\n"
          "from cerp_jax import runlock\n"
          "with runlock.hold({wd!r}):\n  print('held', flush=True); time.sleep(120)\n")


def _start_holder(workdir):
  p = subprocess.Popen([sys.executable, "-c", HOLDER.format(repo=str(REPO), wd=str(workdir))],
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "held"
  return p


def test_second_run_on_a_workdir_is_refused(test_config, tmp_path):
  """A second train.py on a workdir in use exits 2 with one `error:` line naming the holder."""
  wd = tmp_path / "run"
  wd.mkdir()
  holder = _start_holder(wd)
  try:
    cfg = test_config
    r = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"--config={REPO / 'configs' / 'test.py'}",
         f"--workdir={wd}", f"--config.data.path={cfg.data.path}"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
  finally:
    holder.kill()
    holder.wait()
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert r.returncode == 2, r.stderr[-2000:]
  assert len(errors) == 1 and f"pid {holder.pid}" in errors[0] and str(wd) in errors[0]
  assert "Traceback" not in r.stderr
  assert sorted(os.listdir(wd)) == [runlock.LOCK_NAME]  # the refused run wrote nothing


def test_lock_of_a_killed_process_does_not_block(tmp_path):
  holder = _start_holder(tmp_path)
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert (tmp_path / runlock.LOCK_NAME).exists()  # the file stays; the lock died with its holder
  with runlock.hold(str(tmp_path)):
    with pytest.raises(runlock.WorkdirBusyError, match=f"pid {os.getpid()}"):
      with runlock.hold(str(tmp_path)):  # a second holder, even in the same process, is refused
        pass


def test_read_only_workdir_is_one_error_line(test_config, tmp_path, monkeypatch, capsys):
  """Writing into a read-only workdir prints `error: PATH: read-only file system`, exit 2.

  Tests run as root, for whom chmod does not make a directory read-only; the failing system call is
  simulated where the run first writes (the lock file)."""
  real_open = os.open

  def read_only(path, flags, *a):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_open(path, flags, *a)

  wd = tmp_path / "ro"
  wd.mkdir()
  monkeypatch.setattr(runlock.os, "open", read_only)
  with pytest.raises(SystemExit) as exit_:
    cli.run_cli(T.train_and_evaluate, test_config, str(wd))
  err = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2
  assert err == [f"error: {wd / runlock.LOCK_NAME}: read-only file system"]


def _first_step_losses(c, data, dropout: float, steps) -> list:
  """The loss of one MLP step from the same initial state at each training step in ``steps``."""
  c.model.backbone = "mlp"
  c.model.mlp_dropout = dropout
  model = models.create_model(c, data, E.PRUNE)
  tx = T.make_optimizer(c.prune)
  sc = T.StepConfig(eta=c.prune.eta, gamma_init=1.0, gamma_decay=0.5, l2_penalty=0.0, prune=True)
  fn = T.make_block_fn(model, tx, sc)
  variables = models.init_variables(model, c.seed, 6)
  blocks, _ = S.to_steps(*S.BPRSampler(data.train, 5, seed=0).epoch(0), 10, 1)
  block, consts = {k: v[0] for k, v in blocks.items()}, models.model_consts(c, data)
  out = []
  for step in steps:
    params = T.jax.tree_util.tree_map(jnp.copy, variables["params"])  # the step donates its state
    tables = {k: jnp.copy(params["embedding"][k]) for k in ("P", "Q")}
    state = T.TrainState(step=jnp.int32(step), params=params,
                         batch_stats=T.jax.tree_util.tree_map(jnp.copy,
                                                              variables.get("batch_stats", {})),
                         masks={}, opt_state=tx.init(params),
                         rng=T.jax.random.key_data(T.jax.random.key(3)),
                         prune=pruning.init_prune_state(np.array([1]), tables, {
                             k: jnp.copy(v) for k, v in tables.items()}))
    out.append(float(fn(state, block, jnp.int32(0), consts)[1]["loss"][0]))
  return out


def test_mlp_dropout_draws_a_mask_per_step(test_config):
  """mlp_dropout > 0 is live: the mask depends on (rng, step) only, so reruns and resumes agree."""
  data = D.load_interactions(test_config)
  at0, at0_again, at1 = _first_step_losses(test_config, data, 0.5, (0, 0, 1))
  assert at0 == at0_again and at0 != at1
  no0, no1 = _first_step_losses(test_config, data, 0.0, (0, 1))
  assert no0 == no1  # without dropout the step number changes nothing here


def test_eval_on_a_workdir_in_use_is_refused(tmp_path):
  """eval.py takes the same lock: beside a running train.py it exits 2 naming the holder."""
  holder = _start_holder(tmp_path)
  try:
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), f"--workdir={tmp_path}"],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
  finally:
    holder.kill()
    holder.wait()
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert r.returncode == 2 and len(errors) == 1 and f"pid {holder.pid}" in errors[0], r.stderr


@pytest.mark.parametrize("field,value", [("model.threshold_init", float("nan")),
                                         ("prune.lr", float("inf")), ("retrain.lr", -1.0),
                                         ("prune.lr", 0.0)])
def test_non_finite_or_non_positive_values_are_refused(test_config, field, value):
  section, name = field.split(".")
  setattr(test_config[section], name, value)
  with pytest.raises(ValueError, match=f"config.{field}="):
    workdir_lib.validate_config(test_config)
