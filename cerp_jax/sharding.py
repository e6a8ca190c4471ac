"""Device mesh, sharding rules and multi-process set-up on JAX's runtime (docs/scaling_out.md).

A :class:`ShardingPlan` holds the ``jax.sharding.Mesh`` of ``config.mesh_axes`` ×
``config.mesh_shape`` over all processes' devices and places arrays with ``NamedSharding``: training
blocks and scoring batches split along ``'data'`` (padded with masked groups to a multiple of its
size); state replicated, except ``'embedding'`` leaves with ≥ ``config.shard_embedding_rows_min``
rows, row-sharded along ``'model'``. In a multi-process run only process 0 writes files.
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
  """Calls ``jax.distributed.initialize`` (before anything touches a device) when asked by
  ``config.distributed``, ``$CERP_DISTRIBUTED=1`` or ``$JAX_COORDINATOR_ADDRESS``; returns whether
  the run is multi-process-initialized. Arguments: ``config.coordinator_address``,
  ``num_processes``, ``process_id`` (else ``$JAX_COORDINATOR_ADDRESS``, ``$CERP_NUM_PROCESSES``,
  ``$CERP_PROCESS_ID``; else JAX's cluster detection). ``config`` None: environment only."""
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
  """Barrier of all processes (each must call it, in the same order); a no-op in one process."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def resolve_mesh_shape(shape: Sequence[int], axes: Sequence[str], num_devices: int) -> tuple:
  """Mesh shape for ``num_devices``: ``()`` puts all on the first axis, one ``-1`` is filled.

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
  """``Mesh`` (``Auto`` axes) of ``mesh_shape`` (default ``config.mesh_shape``) ×
  ``config.mesh_axes`` (missing: all on 'data') over ``devices`` (default: all processes').

  Raises:
    ValueError: as :func:`resolve_mesh_shape`.
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
  """A ``mesh`` (axes ``'data'``, optionally ``'model'``) and the rules placing state, batches and
  evaluation inputs on it; ``'embedding'`` leaves with ≥ ``shard_rows_min`` rows (``≤ 0``: never)
  are row-sharded along ``'model'``."""

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
    """``P('model')`` for a leaf the row rule shards (if its rows divide; else a warning), or
    ``P()``."""
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
    """Places a numpy block ``users [S, G]``, ``items [S, G, M]``, ``group_mask [S, G]``,
    ``step_mask [S]``, G padded with masked groups to a multiple of the data axis."""
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
