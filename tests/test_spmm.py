"""The CPU propagation kernel (cerp_jax/spmm.py, cerp_jax/csrc/csr_spmm.cc) against scipy and BCSR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from cerp_jax import models
from cerp_jax import spmm


def _graph(n=300, density=0.03, empty_rows=(0, 7, 299)):
  a = sp.random(n, n, density=density, random_state=1, format="csr", dtype=np.float32)
  a = (a + a.T).tolil()
  for r in empty_rows:  # rows (and, symmetric, columns) with no non-zero
    a[r, :] = 0
    a[:, r] = 0
  a = a.tocsr()
  a.sort_indices()
  graph = {"data": jnp.asarray(a.data), "indices": jnp.asarray(a.indices, jnp.int32),
           "indptr": jnp.asarray(a.indptr, jnp.int32)}
  return a, graph


def test_native_kernel_builds_here():
  # the CI machine has g++; a silent fallback would hide a 1.5–4× slowdown of every LightGCN run
  assert spmm.native_available()


@pytest.mark.parametrize("d", [1, 3, 8, 64, 129])
def test_native_equals_scipy_and_bcsr(d, monkeypatch):
  monkeypatch.setenv("CERP_SPMM", "native")
  a, graph = _graph()
  h = np.random.default_rng(d).standard_normal((a.shape[0], d), dtype=np.float32)
  fn = jax.jit(lambda g, x: spmm.csr_matmul(g, x))
  assert "cerp_csr_spmm" in fn.lower(graph, jnp.asarray(h)).as_text()  # the kernel, not BCSR
  native = np.asarray(fn(graph, jnp.asarray(h)))
  bcsr = np.asarray(jax.jit(spmm.bcsr_matmul)(graph, jnp.asarray(h)))
  want = a @ h
  np.testing.assert_allclose(native, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bcsr, want, rtol=1e-5, atol=1e-6)
  assert not native[[0, 7, 299]].any()  # empty rows are written, as zeros


def test_thread_count_does_not_change_the_result(monkeypatch):
  a, graph = _graph(n=1000, density=0.01, empty_rows=())
  h = jnp.asarray(np.random.default_rng(0).standard_normal((1000, 16), dtype=np.float32))
  out = {}
  for t in ("1", "3"):
    monkeypatch.setenv("CERP_SPMM_THREADS", t)
    fn = jax.jit(lambda g, x: spmm.csr_matmul(g, x))  # a new function, a new trace: env read there
    assert f"num_threads = {t} : i64" in fn.lower(graph, h).as_text()
    out[t] = np.asarray(fn(graph, h))
  np.testing.assert_array_equal(out["1"], out["3"])  # same rows, same order: same floats
  np.testing.assert_allclose(out["1"], a @ np.asarray(h), rtol=1e-5, atol=1e-6)


def test_more_threads_than_rows(monkeypatch):
  monkeypatch.setenv("CERP_SPMM_THREADS", "8")
  a, graph = _graph(n=5, density=0.5, empty_rows=())
  h = np.arange(15, dtype=np.float32).reshape(5, 3)
  out = jax.jit(lambda g, x: spmm.csr_matmul(g, x))(graph, jnp.asarray(h))
  np.testing.assert_allclose(np.asarray(out), a @ h, rtol=1e-6)


def test_an_inconsistent_indptr_is_an_error():
  _, graph = _graph()
  bad = dict(graph, indptr=graph["indptr"].at[-1].add(1))  # ends past E
  with pytest.raises(Exception, match="indptr must rise from 0 to at most E"):
    jax.block_until_ready(jax.jit(lambda g, x: spmm.csr_matmul(g, x))(bad, jnp.ones((300, 2))))


def test_gradient_through_the_symmetric_vjp():
  a, graph = _graph()
  h = np.random.default_rng(1).standard_normal((a.shape[0], 5), dtype=np.float32)
  w = np.random.default_rng(2).standard_normal((a.shape[0], 5), dtype=np.float32)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(models.symmetric_spmm(graph, x) * w)))(jnp.asarray(h))
  np.testing.assert_allclose(np.asarray(grad), a.T @ w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["native", "bcsr"])
def test_permute_rows_is_an_exact_copy(mode, monkeypatch):
  monkeypatch.setenv("CERP_SPMM", mode)
  h = np.random.default_rng(3).standard_normal((257, 33), dtype=np.float32)
  perm = np.random.default_rng(4).permutation(257).astype(np.int32)
  fn = jax.jit(lambda x, p: spmm.permute_rows(x, p))
  assert ("cerp_csr_spmm" in fn.lower(jnp.asarray(h), jnp.asarray(perm)).as_text()) == (
      mode == "native")
  out = np.asarray(fn(jnp.asarray(h), jnp.asarray(perm)))
  # equal values (1·x + 0 rounds to x on every CPU; −0 and subnormals, which the kernel turns into
  # +0, are not in h)
  np.testing.assert_array_equal(out, h[perm])


def test_bcsr_mode_and_non_float32_take_bcsr(monkeypatch):
  _, graph = _graph()
  h = jnp.ones((300, 4), jnp.float32)

  def lowered(x):  # a new function each time: the environment is read when it is traced
    return jax.jit(lambda g, y: spmm.csr_matmul(g, y)).lower(graph, x).as_text()

  monkeypatch.setenv("CERP_SPMM", "bcsr")
  assert "cerp_csr_spmm" not in lowered(h)
  monkeypatch.setenv("CERP_SPMM", "auto")
  assert "cerp_csr_spmm" in lowered(h)
  assert "cerp_csr_spmm" not in lowered(h.astype(jnp.bfloat16))


@pytest.mark.parametrize("name,value", [("CERP_SPMM", "fast"), ("CERP_SPMM_THREADS", "0"),
                                        ("CERP_SPMM_THREADS", "two")])
def test_bad_environment_values_are_refused(monkeypatch, name, value):
  monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=name):
    spmm.mode() if name == "CERP_SPMM" else spmm.num_threads()


@pytest.mark.parametrize("compiler", ["missing", "failing"])
def test_a_failed_build_falls_back_or_raises(monkeypatch, tmp_path, caplog, compiler):
  cache = tmp_path / "cache"
  monkeypatch.setenv("CERP_KERNEL_CACHE", str(cache))
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler") if compiler == "missing"
                     else "/bin/false")  # a compiler that exits 1, with and without -march=native
  monkeypatch.setattr(spmm, "_registered", None)  # as in a fresh process
  spmm.native_available.cache_clear()
  _, graph = _graph()
  h = jnp.ones((300, 2), jnp.float32)
  try:
    assert not spmm.native_available()  # auto: a warning, and BCSR
    assert "falls back to BCSR" in caplog.text
    assert "cerp_csr_spmm" not in jax.jit(lambda g, x: spmm.csr_matmul(g, x)).lower(graph, h).as_text()
    monkeypatch.setenv("CERP_SPMM", "native")
    with pytest.raises(spmm.KernelBuildError,
                       match="no-such-compiler" if compiler == "missing" else "/bin/false failed"):
      jax.jit(lambda g, x: spmm.csr_matmul(g, x)).lower(graph, h)
    assert not list(cache.glob("*"))  # nothing half-written in the cache
  finally:
    spmm.native_available.cache_clear()  # the next caller reuses the registered real kernel
