"""The package: public exports, `pip install` into a fresh venv (offline), and the example script."""

import importlib
import os
import pathlib
import re
import shutil
import subprocess
import sysconfig
import venv

import pytest

from conftest import REPO

import cerp_jax


def test_public_exports_resolve_to_their_modules():
  from cerp_jax import embeddings, evaluation, packing, pruning  # pylint: disable=g-import-not-at-top
  assert cerp_jax.CERPEmbedding is embeddings.CERPEmbedding
  assert cerp_jax.Evaluator is evaluation.Evaluator
  assert (cerp_jax.pack, cerp_jax.unpack) == (packing.pack, packing.unpack)
  assert (cerp_jax.capture, cerp_jax.rewind) == (pruning.capture, pruning.rewind)
  for name in cerp_jax.__all__:
    assert getattr(cerp_jax, name) is not None, name
  assert set(cerp_jax.__all__) <= set(dir(cerp_jax))
  with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
    getattr(cerp_jax, "not_a_name")


def test_recommend_is_exported_as_its_module_when_present():
  if importlib.util.find_spec("cerp_jax.recommend") is None:
    assert "recommend" not in cerp_jax.__all__
    with pytest.raises(AttributeError, match="recommend.py is not in this version"):
      getattr(cerp_jax, "recommend")
  else:  # the module, so that `from cerp_jax import recommend as recommend_lib` keeps its meaning
    assert "recommend" in cerp_jax.__all__
    assert cerp_jax.recommend is importlib.import_module("cerp_jax.recommend")


def test_version_is_the_packages():
  text = (REPO / "pyproject.toml").read_text()
  assert 'version = { attr = "cerp_jax.__version__" }' in text
  assert re.fullmatch(r"\d+\.\d+\.\d+", cerp_jax.__version__)


def _fresh_venv(root: pathlib.Path) -> pathlib.Path:
  """A venv without pip whose site-packages sees this environment's packages through a .pth file
  (jax, flax, pip, setuptools: nothing is downloaded), but not cerp_jax: the project environment's
  own .pth files (its editable install) are not processed from a path line. Returns its python."""
  venv.create(root, with_pip=False)
  python = root / "bin" / "python"
  site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        capture_output=True, text=True, check=True).stdout.strip()
  ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
  pathlib.Path(site, "project_env.pth").write_text("\n".join(sorted(ours)) + "\n")
  return python


def _source_copy(dest: pathlib.Path) -> pathlib.Path:
  """What the package is built from, copied (a build writes build/ and *.egg-info beside it)."""
  dest.mkdir()
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    shutil.copy(REPO / name, dest / name)
  shutil.copytree(REPO / "cerp_jax", dest / "cerp_jax", ignore=shutil.ignore_patterns("__pycache__"))
  return dest


def _run(args, cwd, timeout):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout)


def _pip_install(python, source, editable: bool, cwd):
  """``pip install [-e] source`` without the network: no index, no dependencies, no build env (the
  build backend is this environment's setuptools, pinned in requirements.txt)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  major = int(metadata.version("setuptools").split(".")[0])
  assert major >= 77, "pyproject.toml needs setuptools >= 77: `make` installs requirements.txt's pin"
  args = [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-q"] + (["-e"] if editable else []) + [source]
  r = _run(args, cwd, timeout=300)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.mark.parametrize("editable", [False, True], ids=["install", "editable"])
def test_pip_install_into_a_fresh_venv(tmp_path, editable):
  python = _fresh_venv(tmp_path / "venv")
  work = tmp_path / "elsewhere"  # neither the repository nor the source copy
  work.mkdir()
  probe = [python, "-c", "import os, cerp_jax, cerp_jax.spmm as s; print(cerp_jax.__file__); "
           "print(len(cerp_jax.__all__)); print(os.path.isfile(s._SOURCE))"]
  assert _run(probe, work, 60).returncode != 0  # not importable before the install
  source = _source_copy(tmp_path / "src")
  _pip_install(python, source, editable, work)
  r = _run(probe, work, 120)
  assert r.returncode == 0, r.stderr[-3000:]
  where = pathlib.Path(r.stdout.splitlines()[0]).resolve()
  assert where.is_relative_to((source if editable else tmp_path / "venv").resolve())
  assert int(r.stdout.splitlines()[1]) == len(cerp_jax.__all__)
  assert r.stdout.splitlines()[2] == "True"  # the kernel's C++ source ships as package data


@pytest.mark.slow
def test_example_runs_on_the_installed_package(tmp_path):
  python = _fresh_venv(tmp_path / "venv")
  work = tmp_path / "elsewhere"
  work.mkdir()
  _pip_install(python, _source_copy(tmp_path / "src"), False, work)
  shutil.copy(REPO / "examples" / "custom_loop.py", work / "custom_loop.py")
  r = _run([python, "custom_loop.py"], work, 600)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
  out = r.stdout
  reached = re.findall(r"stage 1: budget (\S+): (\d+) non-zeros of (\d+): reached at step (\d+) "
                       r"with (\d+) non-zeros", out)
  assert [t[0] for t in reached] == ["0.30", "0.50"], out
  for _, budget, total, _, nonzeros in reached:
    assert int(nonzeros) <= int(budget) < int(total)
  leaked = re.findall(r"budget (\S+): retrained with the snapshot's mask: (\d+) non-zeros \(mask "
                      r"keeps (\d+)\); masked entries non-zero after retraining: (\d+)", out)
  assert [t[0] for t in leaked] == ["0.30", "0.50"], out
  for (_, nonzeros, kept, masked), (_, budget, _, _, _) in zip(leaked, reached):
    assert int(masked) == 0 and int(nonzeros) <= int(kept) <= int(budget)
  floor = float(re.search(r"most-popular: test recall@20=([\d.]+)", out).group(1))
  recalls = [float(x) for x in re.findall(r"test recall@20=([\d.]+) ndcg@20", out)]
  assert len(recalls) == 2 and min(recalls) > floor, out
