"""Orbax checkpoints of a training run: the train state, the best parameters so far, and JSON metadata.

One :class:`CheckpointStore` per stage directory. Saves are synchronous and atomic (orbax writes to
a temporary directory and renames), so a killed run leaves the previous checkpoint intact. Restores use
an abstract target (``jax.eval_shape``), so optimizer states come back with their types.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint is missing, incomplete or unreadable; the message names the directory."""


class CheckpointStore:
  """Numbered checkpoints under ``directory`` holding items ``state``, ``best`` (optional), ``meta``.

  Args:
    directory: folder (created).
    max_to_keep: how many numbered checkpoints to keep.
  """

  def __init__(self, directory: os.PathLike | str, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "best", "meta"))

  def latest(self) -> Optional[int]:
    return self._mngr.latest_step()

  def save(self, state: Any, meta: dict, best: Any = None) -> int:
    """Saves a new numbered checkpoint; returns its number."""
    n = (self.latest() or 0) + 1
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if best is not None:
      items["best"] = ocp.args.StandardSave(best)
    self._mngr.save(n, args=ocp.args.Composite(**items))
    self._mngr.wait_until_finished()
    return n

  def restore_meta(self, n: Optional[int] = None) -> dict:
    n = self.latest() if n is None else n
    if n is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    try:
      out = self._mngr.restore(n, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises several types for damaged files
      raise CheckpointError(f"cannot read checkpoint {n} metadata in {self.directory}: {e}") from e
    return dict(out["meta"])

  def restore(self, like_state: Any, like_best: Any = None, n: Optional[int] = None):
    """Restores ``(state, meta, best)`` with the structure of ``like_state``/``like_best``.

    Raises:
      CheckpointError: none there, or the files are incomplete/corrupt/of another structure.
    """
    n = self.latest() if n is None else n
    if n is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    abstract = lambda t: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, t)
    items = {"state": ocp.args.StandardRestore(abstract(like_state)),
             "meta": ocp.args.JsonRestore()}
    if like_best is not None:
      items["best"] = ocp.args.StandardRestore(abstract(like_best))
    try:
      out = self._mngr.restore(n, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises several types for damaged files
      raise CheckpointError(
          f"cannot restore checkpoint {n} in {self.directory} (corrupt, incomplete, or written by a "
          f"different config): {type(e).__name__}: {e}") from e
    return out["state"], dict(out["meta"]), out.get("best") if like_best is not None else None

  def close(self):
    self._mngr.close()
