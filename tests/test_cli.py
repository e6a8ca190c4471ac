"""Entry points' command lines: every bad flag or config is one `error:` line and exit status 2."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

CASES = {
    "missing config file": (
        ["train.py", "--config=configs/nope.py"],
        "error: --config=configs/nope.py: config file 'configs/nope.py' not found (relative to the "
        f"current directory {REPO})"),
    "unknown field": (
        ["train.py", "--config=configs/test.py", "--config.model.dimm=8"],
        "error: --config.model.dimm: unknown config field 'model.dimm' (did you mean 'model.dim'?)"),
    "unknown section": (
        ["train.py", "--config=configs/test.py", "--config.modle.dim=8"],
        "error: --config.modle.dim: unknown config field 'modle' (did you mean 'model'?)"),
    "bad type": (
        ["train.py", "--config=configs/test.py", "--config.model.dim=abc"],
        "error: --config.model.dim=abc: expected an int, got 'abc'"),
    "bad tuple element": (
        ["train.py", "--config=configs/test.py", "--config.target_sparsities=abc"],
        "error: --config.target_sparsities: expected a tuple of float, got ('abc',)"),
    "bad preset": (
        ["train.py", "--config=configs/test.py:bogus"],
        "error: --config=configs/test.py:bogus: unknown config argument 'bogus': expected 'parity', "
        "'full' and/or 'fast'"),
    "sweep: unknown field": (
        ["sweep.py", "--config=configs/sweep_test.py", "--config.sweep.budgetz=1"],
        "error: --config.sweep.budgetz: unknown config field 'sweep.budgetz' (did you mean "
        "'sweep.budgets'?)"),
    "sweep: missing config file": (
        ["sweep.py", "--config=configs/sweep_nope.py"],
        "error: --config=configs/sweep_nope.py: config file 'configs/sweep_nope.py' not found "
        f"(relative to the current directory {REPO})"),
    "eval: bad type": (
        ["eval.py", "--user_sample=abc"],
        "error: --user_sample=abc: expected an int, got 'abc'"),
}


def _run(args, env=None):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120, env={**os.environ, **(env or {})})


# The three of the issue (and eval.py's) always run; the other cases, each a ~5 s process, are slow.
FAST = ("missing config file", "unknown field", "bad type", "eval: bad type")


@pytest.mark.parametrize("case", [c if c in FAST else pytest.param(c, marks=pytest.mark.slow)
                                  for c in CASES])
def test_bad_command_line_is_one_error_line(case, tmp_path):
  args, expected = CASES[case]
  r = _run(args + [f"--workdir={tmp_path / 'w'}"])
  assert r.returncode == 2, r.stderr[-3000:]
  assert [l for l in r.stderr.splitlines() if l.strip()] == [expected]
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_missing_required_flag_is_named():
  r = _run(["train.py", "--config=configs/test.py"])
  assert (r.returncode, r.stderr.strip()) == (2, "error: --workdir is required")


@pytest.mark.slow
def test_traceback_on_request(tmp_path):
  r = _run(["train.py", "--config=configs/test.py", "--config.model.dimm=8",
            f"--workdir={tmp_path / 'w'}"], env={"CERP_TRACEBACK": "1"})
  assert r.returncode not in (0, 2) and "Traceback" in r.stderr


def test_help_shows_the_scripts_own_flags_first():
  r = _run(["train.py", "--help"])
  assert r.returncode == 0, r.stderr
  flags = r.stdout[r.stdout.index("\nflags:\n"):]
  first = next(l for l in flags.splitlines() if l.startswith("  --"))
  assert first.startswith("  --config:"), flags
  assert "--workdir:" in flags and "--config.<field>=<value>" in flags
  assert "--logtostderr" not in r.stdout and "--jax_" not in r.stdout  # libraries' flags: --helpfull
