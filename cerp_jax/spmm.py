"""Sparse × dense products ``Â @ h`` for LightGCN's propagation.

Two implementations of the same product, picked per platform at lowering time:

* ``bcsr`` — ``jax.experimental.sparse.BCSR``; runs on every backend (GPU, TPU, CPU).
* ``native`` — a small C++ kernel (``cerp_jax/csrc/csr_spmm.cc``) called through the XLA FFI on the
  CPU: one sweep per output row, the gathered row a few non-zeros ahead prefetched, rows split over
  the cores this process may run on. On Gowalla's graph the propagation's forward + backward is
  1.3–3.4× faster than BCSR on the CPU (docs/results/gowalla_lightgcn.md, "a native CPU kernel").
  Each row is summed in CSR order by one thread, so the result does not depend on the thread count.
  The same kernel permutes rows (:func:`permute_rows`), for the graph's locality order
  (:mod:`cerp_jax.graph`).

The kernel is compiled on first use with the system's C++ compiler (``$CXX``, else ``g++`` or
``c++``) against the XLA FFI headers that ship with jaxlib, into a cache folder
(``$CERP_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/cerp_jax`` or ``~/.cache/cerp_jax``; the system's
temporary folder when that is not writable), keyed by the source, jaxlib's version, the compiler
and the CPU's flags. Without a compiler, or if the build
fails, a warning is logged once and the CPU uses ``bcsr``. ``CERP_SPMM=bcsr`` forces BCSR,
``CERP_SPMM=native`` makes a failed build an error; ``CERP_SPMM_THREADS`` sets the kernel's threads
(default: the CPUs in this process's affinity mask). Both are read when a function is traced.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile

from absl import logging
import jax
from jax.experimental import sparse as jsparse
import jax.numpy as jnp
import jaxlib
import numpy as np

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "csr_spmm.cc")
_TARGET = "cerp_csr_spmm"
_MODES = ("auto", "native", "bcsr")


class KernelBuildError(RuntimeError):
  """The native kernel could not be compiled or loaded (only raised with ``CERP_SPMM=native``)."""


def mode() -> str:
  """``$CERP_SPMM``: 'auto' (default: native on the CPU when it builds), 'native' or 'bcsr'.

  Raises:
    ValueError: another value.
  """
  m = os.environ.get("CERP_SPMM", "auto").strip().lower() or "auto"
  if m not in _MODES:
    raise ValueError(f"CERP_SPMM={m!r}: expected one of {', '.join(_MODES)}")
  return m


def num_threads() -> int:
  """Threads of the native kernel: ``$CERP_SPMM_THREADS``, else the CPUs this process may use."""
  env = os.environ.get("CERP_SPMM_THREADS", "").strip()
  if env:
    if not env.isdigit() or int(env) < 1:
      raise ValueError(f"CERP_SPMM_THREADS={env!r}: expected a positive integer")
    return int(env)
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:  # not on Linux
    return max(1, os.cpu_count() or 1)


def bcsr_matmul(graph: dict, h: jax.Array) -> jax.Array:
  """``Â @ h`` with ``jax.experimental.sparse.BCSR`` (any backend; autodiff-able).

  Args:
    graph: ``data [E] float32``, ``indices [E] int32``, ``indptr [N+1] int32`` (CSR of Â).
    h: ``[N, d]``.

  Returns:
    ``[N, d]``, h's dtype.
  """
  n = graph["indptr"].shape[0] - 1
  a = jsparse.BCSR((graph["data"], graph["indices"], graph["indptr"]), shape=(n, n))
  return a @ h


def csr_matmul(graph: dict, h: jax.Array) -> jax.Array:
  """``Â @ h``: the native kernel on the CPU when available (see the module doc), BCSR elsewhere.

  No autodiff rule of its own: LightGCN wraps it in its symmetric custom VJP
  (:func:`cerp_jax.models.symmetric_spmm`).

  Args:
    graph: ``data [E] float32``, ``indices [E] int32``, ``indptr [N+1] int32`` (CSR of Â).
    h: ``[N, d]`` (the native kernel takes float32 h and data with int32 indices; other dtypes,
      and other default backends than the CPU, take BCSR).

  Returns:
    ``[N, d]``, h's dtype.

  Raises:
    KernelBuildError: ``CERP_SPMM=native`` and the kernel does not build.
  """
  if not _use_native(graph, h):
    return bcsr_matmul(graph, h)
  return jax.lax.platform_dependent(graph, h, cpu=_native_matmul(), default=bcsr_matmul)


def permute_rows(h: jax.Array, perm: jax.Array) -> jax.Array:
  """``h[perm]`` for a permutation ``perm [N] int32`` of h's ``N`` rows.

  On the CPU with the native kernel this is its product with the permutation matrix (one unit entry
  per row, each output row starts from +0: every value comes back equal, except that −0 becomes +0
  and subnormals flush to zero, as in XLA's own CPU arithmetic), which streams rows near the memory
  bandwidth where XLA's gather took 2–3× longer (Gowalla, [70,839, 128]); elsewhere XLA's gather.
  """
  n = perm.shape[0]
  unit = {"indptr": jnp.arange(n + 1, dtype=jnp.int32), "indices": perm.astype(jnp.int32),
          "data": jnp.ones((n,), jnp.float32)}
  if not _use_native(unit, h):
    return h[perm]
  return jax.lax.platform_dependent(unit, h, cpu=_native_matmul(),
                                    default=lambda g, x: x[g["indices"]])


def _use_native(graph: dict, h: jax.Array) -> bool:
  """Whether the native kernel serves this product (the default backend is the CPU, the mode and
  dtypes allow it, and it builds).

  Raises:
    KernelBuildError: ``CERP_SPMM=native`` and the kernel does not build.
  """
  m = mode()
  fits = (h.dtype == jnp.float32 and h.ndim == 2 and graph["data"].dtype == jnp.float32
          and graph["indices"].dtype == graph["indptr"].dtype == jnp.int32)
  if m == "bcsr" or not fits or jax.default_backend() != "cpu":
    return False
  if not native_available():
    if m == "native":
      raise KernelBuildError(f"CERP_SPMM=native: the CPU kernel is unavailable: {_build_error}")
    return False
  return True


def _native_matmul():
  """A new ``(graph, h) -> Â @ h`` through the kernel, with this trace's thread count (a new
  function per trace: JAX caches traces by function)."""
  threads = np.int64(num_threads())

  def native(graph, h):
    call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct(h.shape, h.dtype),
                            vmap_method="sequential")
    return call(graph["indptr"], graph["indices"], graph["data"], h, num_threads=threads)

  return native


_registered = None  # path of the library whose handler this process registered (once only:
_build_error = ""   # XLA refuses a second handler under the same name)


@functools.cache
def native_available() -> bool:
  """Builds (once per cache key), loads and registers the kernel; False (with one warning) if not.

  The reason of a failure is kept for :func:`csr_matmul`'s error under ``CERP_SPMM=native``.
  """
  global _registered, _build_error
  if _registered:
    return True
  try:
    path = _build()
    try:
      lib = ctypes.cdll.LoadLibrary(path)
    except OSError:  # a cached file that does not load (truncated, unreadable): build it anew
      path = _build(force=True)
      lib = ctypes.cdll.LoadLibrary(path)
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.CerpCsrSpmm), platform="cpu")
    _registered = path
    return True
  except (OSError, subprocess.SubprocessError, KernelBuildError) as e:
    _build_error = str(e)
    logging.warning("LightGCN propagation on the CPU falls back to BCSR (slower): %s", e)
    return False


def _cache_dir() -> str:
  if os.environ.get("CERP_KERNEL_CACHE"):
    return os.environ["CERP_KERNEL_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "cerp_jax")


def _cpu_flags() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    return platform.processor()


def _build(force: bool = False) -> str:
  """Path of the compiled kernel, compiling it when the cache has none for this key (or ``force``).

  Raises:
    KernelBuildError: no C++ compiler, or the compiler failed (its last message lines).
  """
  cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not cxx:
    raise KernelBuildError("no C++ compiler found (set $CXX or install g++)")
  with open(_SOURCE, "rb") as f:
    source = f.read()
  flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread",
           f"-I{jax.ffi.include_dir()}"]
  key = hashlib.sha256(b"\0".join([source, jaxlib.__version__.encode(), cxx.encode(),
                                   " ".join(flags).encode(), _cpu_flags().encode(),
                                   platform.machine().encode()])).hexdigest()[:16]
  # the cache folder, else (not writable) the temporary folder
  for out_dir in (_cache_dir(), os.path.join(tempfile.gettempdir(), "cerp_jax")):
    path = os.path.join(out_dir, f"csr_spmm-{key}.so")
    if os.path.exists(path) and not force:
      return path
    try:
      os.makedirs(out_dir, exist_ok=True)
      fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
      break
    except OSError:
      if out_dir != _cache_dir():
        raise
  os.close(fd)
  try:
    proc = subprocess.run([cxx, *flags, _SOURCE, "-o", tmp], capture_output=True, text=True,
                          timeout=300, check=False)
    if proc.returncode != 0:  # a compiler without -march=native (some non-x86 ones): portable code
      proc = subprocess.run([cxx, *[f for f in flags if f != "-march=native"], _SOURCE, "-o", tmp],
                            capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
      tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
      raise KernelBuildError(f"{cxx} failed on {_SOURCE}: {tail}")
    os.chmod(tmp, 0o755)  # mkstemp's 0600 would keep other users of a shared cache out
    os.replace(tmp, path)  # atomic: a concurrent build of the same key writes the same file
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  logging.info("compiled the CPU propagation kernel: %s", path)
  return path
