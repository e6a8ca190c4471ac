"""Device mesh, sharding rules and multi-process set-up, on JAX's own runtime.

One :class:`ShardingPlan` per run holds a ``jax.sharding.Mesh`` built from the config and the rules
that place every array on it with ``NamedSharding``:

* **mesh**: ``config.mesh_axes`` names the axes (``('data',)`` or ``('data', 'model')``);
  ``config.mesh_shape`` their sizes (``()``: every device on ``'data'``; one entry may be ``-1``,
  "the rest"). Built over ``jax.devices()``, i.e. all devices of all processes.
* **training batches**: the group axis (axis 1 of a ``[steps, G, ...]`` block) is split along
  ``'data'``. A ``G`` that the data-axis size does not divide is **padded** with masked groups
  (``group_mask`` False, ids 0): every loss term is masked, so the numbers are those of the unpadded
  step, and the same command runs on any device count.
* **state and variables**: replicated, except the rule ``config.shard_embedding_rows_min``: a leaf
  under an ``'embedding'`` key (parameters, their optimizer moments, the best copy, masks) with
  ``ndim ≥ 2`` and at least that many rows is row-sharded along ``'model'`` (only if the mesh has a
  ``'model'`` axis of size > 1). CERP's ``[b, d]`` tables stay replicated; a full ``[N, d]`` table
  is split by rows. Rows the model-axis size does not divide cannot be placed by ``jax.Array`` (no
  uneven shards): such a leaf stays replicated and a warning says so.
* **evaluation**: the users of each scoring batch are split along ``'data'`` (the batch size is
  rounded up to a multiple of the data-axis size; padded users are dropped from the metrics);
  items, tables and the per-batch index lists are replicated; masking, top-K and metrics run per
  user shard (``shard_map``, :func:`cerp_jax.evaluation.sharded_batch_metrics`).

Multi-process (several hosts, or several processes on one): :func:`distributed_init` calls
``jax.distributed.initialize()`` when the config or the environment asks for it. Every process then
runs the same program, builds the same (seeded) epoch sample and feeds only its addressable shards
of every batch (``jax.make_array_from_callback``); only process 0 writes logs, metrics and result
files (:func:`is_primary`); orbax saves and restores the sharded state, on any device count
(restores are placed with the shardings of the current mesh).
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA, MODEL = "data", "model"
AXES = (DATA, MODEL)
BLOCK_GROUP_AXIS = 1  # training blocks are [steps, groups, ...]

# Environment variables read by distributed_init (besides JAX's own JAX_COORDINATOR_ADDRESS).
ENV_DISTRIBUTED = "CERP_DISTRIBUTED"
ENV_NUM_PROCESSES = "CERP_NUM_PROCESSES"
ENV_PROCESS_ID = "CERP_PROCESS_ID"


def _cfg(config, name: str, default):
  if config is None:
    return default
  return config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)


def distributed_init(config=None) -> bool:
  """Starts JAX's multi-process runtime (``jax.distributed.initialize``) when asked to.

  Asked when ``config.distributed`` is True, ``$CERP_DISTRIBUTED`` is ``1``/``true``, or JAX's own
  ``$JAX_COORDINATOR_ADDRESS`` is set. Arguments come from ``config.coordinator_address``,
  ``config.num_processes``, ``config.process_id`` (or ``$JAX_COORDINATOR_ADDRESS``,
  ``$CERP_NUM_PROCESSES``, ``$CERP_PROCESS_ID``); unset ones are left to JAX's cluster detection
  (Cloud TPU, SLURM, Open MPI, Kubernetes). Must run before anything touches a JAX device.

  Args:
    config: the run's ConfigDict, or None (environment only).

  Returns:
    True if the run is (now) multi-process-initialized, False if nothing was asked.
  """
  env = os.environ
  address = _cfg(config, "coordinator_address", "") or env.get("JAX_COORDINATOR_ADDRESS", "")
  nproc = int(_cfg(config, "num_processes", 0) or env.get(ENV_NUM_PROCESSES, 0) or 0)
  pid = int(_cfg(config, "process_id", -1))
  if pid < 0 and env.get(ENV_PROCESS_ID, ""):
    pid = int(env[ENV_PROCESS_ID])
  asked = (bool(_cfg(config, "distributed", False))
           or env.get(ENV_DISTRIBUTED, "").lower() in ("1", "true", "yes") or bool(address))
  if not asked:
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = {}
  if address:
    kwargs["coordinator_address"] = address
  if nproc > 0:
    kwargs["num_processes"] = nproc
  if pid >= 0:
    kwargs["process_id"] = pid
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True


def is_primary() -> bool:
  """True in process 0, the only one that writes logs, metrics and result files."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Multi-process barrier (``multihost_utils.sync_global_devices``): e.g. before every process reads
  a file process 0 wrote. Every process must call it, in the same order; a no-op in one process."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def resolve_mesh_shape(shape: Sequence[int], axes: Sequence[str], num_devices: int) -> tuple:
  """The mesh shape for ``num_devices``: ``()`` puts all on the first axis, one ``-1`` is filled.

  Raises:
    ValueError: bad axis names, or sizes whose product is not the device count.
  """
  axes = tuple(axes)
  if not axes or axes[0] != DATA or len(set(axes)) != len(axes) or not set(axes) <= set(AXES):
    raise ValueError(f"config.mesh_axes={axes!r}: expected ('data',) or ('data', 'model')")
  shape = tuple(int(s) for s in shape)
  if not shape:
    shape = (-1,) + (1,) * (len(axes) - 1)
  if len(shape) != len(axes):
    raise ValueError(f"config.mesh_shape={shape} has {len(shape)} sizes for mesh_axes={axes}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"config.mesh_shape={shape}: sizes must be ≥ 1, at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ValueError(f"config.mesh_shape={shape}: {num_devices} devices are not a multiple of "
                       f"{known}")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ValueError(f"config.mesh_shape={shape} (axes {axes}) needs {math.prod(shape)} devices, "
                     f"this run has {num_devices}; use -1 for one axis or () for all on 'data'")
  return shape


def make_mesh(config=None, devices: Optional[Sequence[Any]] = None,
              mesh_shape: Optional[Sequence[int]] = None) -> Mesh:
  """``jax.sharding.Mesh`` of ``config.mesh_shape`` × ``config.mesh_axes`` (GSPMD ``Auto`` axes).

  Args:
    config: ConfigDict with ``mesh_shape`` and ``mesh_axes`` (missing: all devices on 'data').
    devices: devices to use (default ``jax.devices()``, all processes).
    mesh_shape: overrides ``config.mesh_shape``.
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = tuple(_cfg(config, "mesh_axes", (DATA,)))
  shape = resolve_mesh_shape(_cfg(config, "mesh_shape", ()) if mesh_shape is None else mesh_shape,
                             axes, len(devices))
  return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)


def _path_keys(path) -> list:
  out = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        out.append(getattr(k, attr))
        break
  return out


def _pad_axis(x: np.ndarray, axis: int, size: int) -> np.ndarray:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return np.pad(x, pad)  # zeros / False: masked groups with ids 0


class ShardingPlan:
  """A mesh plus the rules placing state, batches and evaluation inputs on it.

  Args:
    mesh: the device mesh (axes ``'data'`` and optionally ``'model'``).
    shard_rows_min: row-shard ``'embedding'`` leaves with at least this many rows along ``'model'``
      (``≤ 0``: never).
  """

  def __init__(self, mesh: Mesh, shard_rows_min: int = 0):
    self.mesh = mesh
    self.shard_rows_min = int(shard_rows_min)
    self.replicated = NamedSharding(mesh, P())
    self._warned: set = set()
    self._padded: set = set()

  @classmethod
  def from_config(cls, config, devices=None, mesh_shape=None) -> "ShardingPlan":
    """The plan of the config's ``mesh_shape``, ``mesh_axes`` and ``shard_embedding_rows_min``."""
    return cls(make_mesh(config, devices, mesh_shape),
               int(_cfg(config, "shard_embedding_rows_min", 0) or 0))

  @property
  def data_size(self) -> int:
    return int(self.mesh.shape[DATA])

  @property
  def model_size(self) -> int:
    return int(self.mesh.shape.get(MODEL, 1))

  def describe(self) -> str:
    """One log line: the mesh and what is split along which axis."""
    rule = (f"embedding leaves with ≥ {self.shard_rows_min} rows row-sharded along 'model'"
            if self.model_size > 1 and self.shard_rows_min > 0 else "state replicated")
    return (f"mesh {dict(self.mesh.shape)} over {self.mesh.devices.size} device(s) in "
            f"{jax.process_count()} process(es); batches split along 'data'; {rule}")

  # ---------------------------------------------------------------- state / variables
  def spec(self, path, shape: Sequence[int]) -> P:
    """PartitionSpec of one state leaf: ``P('model')`` (rows) by the row rule, else ``P()``."""
    if (self.model_size <= 1 or self.shard_rows_min <= 0 or len(shape) < 2
        or shape[0] < self.shard_rows_min or "embedding" not in _path_keys(path)):
      return P()
    if shape[0] % self.model_size:
      name = jax.tree_util.keystr(tuple(path))
      if name not in self._warned:
        self._warned.add(name)
        logging.warning("%s: %d rows are not a multiple of the 'model' axis size %d; jax.Array has "
                        "no uneven shards, so it stays replicated", name, shape[0], self.model_size)
      return P()
    return P(MODEL)  # no trailing Nones: jit returns it in this normal form (same cache key)

  def shardings(self, tree):
    """Pytree of ``NamedSharding`` for a pytree of arrays (or shape/dtype structs)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(self.mesh, self.spec(p, np.shape(x))), tree)

  def put(self, tree):
    """Places a pytree on the mesh by :meth:`shardings` (global arrays in multi-process runs)."""
    return jax.tree_util.tree_map(_put, tree, self.shardings(tree))

  def constrain(self, tree):
    """Inside ``jit``: ``with_sharding_constraint`` of a pytree to :meth:`shardings`."""
    return jax.lax.with_sharding_constraint(tree, self.shardings(tree))

  # ---------------------------------------------------------------- training batches
  def padded_groups(self, groups: int) -> int:
    """``groups`` rounded up to a multiple of the data-axis size."""
    return -(-groups // self.data_size) * self.data_size

  def batch_sharding(self, ndim: int) -> NamedSharding:
    """Blocks ``[steps, G, ...]``: ``G`` along 'data'; ``[steps]`` arrays replicated."""
    if ndim <= BLOCK_GROUP_AXIS:
      return self.replicated
    return NamedSharding(self.mesh, P(None, DATA))

  def put_batch(self, block: dict) -> dict:
    """Pads the group axis with masked groups to a multiple of the data axis, then places it.

    Args:
      block: numpy ``users [S, G]``, ``items [S, G, M]``, ``group_mask [S, G]``, ``step_mask [S]``.
    """
    g = block["users"].shape[BLOCK_GROUP_AXIS]
    gp = self.padded_groups(g)
    if gp != g and g not in self._padded:
      self._padded.add(g)
      logging.info("groups per step %d padded to %d with masked groups (data axis of %d devices)",
                   g, gp, self.data_size)
    out = {}
    for k, v in block.items():
      v = np.asarray(v)
      if v.ndim > BLOCK_GROUP_AXIS and gp != g:
        v = _pad_axis(v, BLOCK_GROUP_AXIS, gp)
      out[k] = _put(v, self.batch_sharding(v.ndim))
    return out

  def constrain_batch(self, block: dict) -> dict:
    """Inside ``jit``: keeps a block's group axis split along 'data'."""
    return {k: jax.lax.with_sharding_constraint(v, self.batch_sharding(v.ndim))
            for k, v in block.items()}

  # ---------------------------------------------------------------- evaluation
  @property
  def users_sharding(self) -> NamedSharding:
    """Scoring batches: users (rows of the score matrix) along 'data'."""
    return NamedSharding(self.mesh, P(DATA))

  def put_users(self, users: np.ndarray):
    return _put(np.asarray(users), self.users_sharding)

  def put_replicated(self, x):
    return _put(np.asarray(x), self.replicated)


def _put(x, sharding: NamedSharding):
  """One leaf onto ``sharding``; in multi-process runs each process feeds its addressable shards."""
  if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
    return jax.device_put(x, sharding)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def to_host(tree):
  """numpy copy of a pytree of (possibly sharded, multi-process) arrays, alike in every process."""

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree_util.tree_map(one, tree)
