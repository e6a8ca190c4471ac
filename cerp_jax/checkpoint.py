"""Orbax checkpoints of a training run: the train state, the best parameters so far, and JSON metadata.

One :class:`CheckpointStore` per stage directory. Saves are synchronous and atomic (orbax writes to
a temporary directory and renames), so a killed run leaves the previous checkpoint intact. Restores use
an abstract target (``jax.eval_shape``), so optimizer states come back with their types.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from absl import logging
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

  def _candidates(self, n: Optional[int]) -> list:
    if n is not None:
      return [n]
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    return steps

  def _restore_first_readable(self, n: Optional[int], args_fn, what: str):
    """Restores checkpoint ``n``, or (``n=None``) the newest readable one: a corrupt or incomplete
    newest checkpoint is reported and the previous one is used (the run then redoes those steps,
    deterministically)."""
    errors = []
    for k in self._candidates(n):
      try:
        out = self._mngr.restore(k, args=args_fn())
      except Exception as e:  # orbax raises several types for damaged files
        errors.append((k, e))
        continue
      for bad, e in errors:
        logging.warning("checkpoint %d in %s is unreadable (%s: %s); using checkpoint %d instead",
                        bad, self.directory, type(e).__name__, str(e)[:200], k)
      return out
    k, e = errors[0]
    raise CheckpointError(
        f"cannot restore {what} from checkpoint {k} in {self.directory} (corrupt, incomplete, or "
        f"written by a different config; {len(errors)} checkpoint(s) tried; delete the directory "
        f"to start over): {type(e).__name__}: {e}") from e

  def restore_meta(self, n: Optional[int] = None) -> dict:
    """The JSON metadata of checkpoint ``n`` (default: the newest readable one)."""
    out = self._restore_first_readable(
        n, lambda: ocp.args.Composite(meta=ocp.args.JsonRestore()), "metadata")
    return dict(out["meta"])

  def restore(self, like_state: Any, like_best: Any = None, n: Optional[int] = None):
    """Restores ``(state, meta, best)`` with the structure of ``like_state``/``like_best``.

    ``n=None`` takes the newest readable checkpoint (a damaged newest one is skipped, with a warning).

    Raises:
      CheckpointError: none there, or every candidate is incomplete/corrupt/of another structure.
    """
    abstract = lambda t: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, t)

    def args():
      items = {"state": ocp.args.StandardRestore(abstract(like_state)),
               "meta": ocp.args.JsonRestore()}
      if like_best is not None:
        items["best"] = ocp.args.StandardRestore(abstract(like_best))
      return ocp.args.Composite(**items)

    out = self._restore_first_readable(n, args, "the train state")
    return out["state"], dict(out["meta"]), out.get("best") if like_best is not None else None

  def close(self):
    self._mngr.close()
