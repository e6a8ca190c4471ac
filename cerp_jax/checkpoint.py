"""Orbax checkpoints of one training stage: train state, best parameters, JSON metadata.

Saves are synchronous and atomic; restores use an abstract target. Each save records in its metadata
(key ``_integrity``) a SHA-256 digest of every array leaf (dtype, shape, bytes) and of the metadata;
each restore checks them and falls back to the newest checkpoint that verifies (one without digests
restores unverified, with a warning; docs/usage.md).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import sys
from typing import Any, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from cerp_jax import sharding as shard_lib

_INTEGRITY = "_integrity"  # meta key of the digests; added on save, removed on restore
_ALGORITHM = "sha256"


class CheckpointError(RuntimeError):
  """A checkpoint is missing, incomplete, unreadable or fails its digests (names the directory)."""


def leaf_name(path) -> str:
  """``'params/embedding/P'``: a pytree path (dict keys, attribute names, sequence indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _array_digest(a: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(f"{a.dtype.str}{a.shape}".encode())
  h.update(np.ascontiguousarray(a))
  return h.hexdigest()


def host_leaves(tree) -> list:
  """``[(leaf name, numpy array)]`` of a pytree, in tree order (sharded multi-process leaves are
  gathered, so every process sees the same arrays)."""
  leaves = jax.tree_util.tree_flatten_with_path(shard_lib.to_host(tree))[0]
  return [(leaf_name(p), np.asarray(x)) for p, x in leaves]


def _parallel(fn, arrays: list) -> list:
  """``[fn(a) for a in arrays]`` on threads (hashlib and numpy release the GIL on large arrays)."""
  if len(arrays) < 2:
    return [fn(a) for a in arrays]
  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
    return list(pool.map(fn, arrays))


def tree_digests(tree) -> dict:
  """``{leaf name: hex SHA-256 of dtype, shape, C-order bytes}`` of a pytree of arrays (device or
  host; sharded leaves gathered)."""
  leaves = host_leaves(tree)
  return dict(zip([n for n, _ in leaves], _parallel(_array_digest, [a for _, a in leaves])))


def _finite_and_digest(a: np.ndarray) -> tuple:
  finite = not jax.numpy.issubdtype(a.dtype, jax.numpy.inexact) or bool(np.isfinite(a).all())
  return finite, _array_digest(a)


def _meta_digest(meta: dict) -> str:
  """Digest of the JSON text of ``meta`` (keys sorted; JSON round trips keep it unchanged)."""
  return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _one_line(e: BaseException, limit: int = 200) -> str:
  """``'Type: message'`` of the innermost cause of ``e`` on one line of ≤ ``limit`` characters
  (start and end kept; TensorStore's appended spec dropped)."""
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  first = next((l for l in str(e).splitlines() if l.strip()), "")
  for tail in ("[tensorstore_spec=", "See full TensorStore details"):
    first = first.split(tail)[0].rstrip(" ;,([")
  text = f"{type(e).__name__}: {first}"
  if len(text) <= limit:
    return text
  head = limit // 3
  return text[:head] + " … " + text[-(limit - head - 3):]


def _quiet_closed_loop_errors() -> None:
  """Installs once a ``sys.unraisablehook`` dropping the ``RuntimeError: Event loop is closed``
  reports of a failed restore's pending reads (``CERP_TRACEBACK=1`` keeps them)."""
  previous = sys.unraisablehook
  if getattr(previous, "cerp_quiet", False) or os.environ.get("CERP_TRACEBACK"):
    return

  def hook(unraisable):
    if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
      return
    previous(unraisable)

  hook.cerp_quiet = True
  sys.unraisablehook = hook


class CheckpointStore:
  """Numbered checkpoints under ``directory`` (created; ``max_to_keep`` kept) holding items
  ``state``, ``best`` (optional) and ``meta``.

  Attributes:
    last_good: number of the checkpoint last saved or restored (verified), or None.
    last_restore: after a restore, ``{'directory', 'checkpoint' (restored), 'newest', 'fallback'
      (an older one was used), 'verified' (digests checked), 'skipped': [{'checkpoint', 'reason'}],
      'message' (the warning line, or None)}``; None before.
  """

  def __init__(self, directory: os.PathLike | str, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._mngr = ocp.CheckpointManager(self.directory, options=options,
                                       item_names=("state", "best", "meta"))
    self.last_good: Optional[int] = None
    self.last_restore: Optional[dict] = None

  def latest(self) -> Optional[int]:
    return self._mngr.latest_step()

  def save(self, state: Any, meta: dict, best: Any = None) -> int:
    """Saves pytrees ``state`` and ``best`` (optional) and JSON ``meta`` (key ``_integrity``
    reserved) with their digests as checkpoint ``latest + 1``; returns its number.

    Raises:
      CheckpointError: a float array of ``state`` or ``best`` holds NaN/Inf (nothing is written).
    """
    n = (self.latest() or 0) + 1
    trees = {"state": state} if best is None else {"state": state, "best": best}
    digests = {}
    for item, tree in trees.items():
      leaves = host_leaves(tree)
      checked = _parallel(_finite_and_digest, [a for _, a in leaves])
      bad = [name for (name, _), (finite, _) in zip(leaves, checked) if not finite]
      if bad:
        raise CheckpointError(f"{self.directory}: refusing to save checkpoint {n}: non-finite "
                              f"values in {item} leaf {bad[0]}" + (
                                  f" and {len(bad) - 1} more" if len(bad) > 1 else ""))
      digests[item] = {name: d for (name, _), (_, d) in zip(leaves, checked)}
    body = {k: v for k, v in meta.items() if k != _INTEGRITY}
    record = {"algorithm": _ALGORITHM, "items": digests, "meta": _meta_digest(body)}
    items = {"state": ocp.args.StandardSave(state),
             "meta": ocp.args.JsonSave({**body, _INTEGRITY: record})}
    if best is not None:
      items["best"] = ocp.args.StandardSave(best)
    self._mngr.save(n, args=ocp.args.Composite(**items))
    self._mngr.wait_until_finished()
    self.last_good = n
    return n

  def _candidates(self, n: Optional[int]) -> list:
    if n is not None:
      return [n]
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    return steps

  def _has_item(self, k: int, item: str) -> bool:
    return os.path.isdir(os.path.join(self.directory, str(k), item))

  def _restore_verified(self, n: Optional[int], args_fn, wanted: tuple, what: str):
    """(orbax Composite, metadata without digests) of checkpoint ``n``, or of the newest that reads
    and verifies (``n=None``), restored with ``args_fn(k)``; ``wanted`` items must verify when
    recorded; ``what`` names them in errors. Sets :attr:`last_restore`.

    Raises:
      CheckpointError: no candidate reads and verifies (names the directory and each reason).
    """
    candidates, skipped, cause = self._candidates(n), [], None
    for k in candidates:
      try:
        out = self._mngr.restore(k, args=args_fn(k))
        meta = dict(out["meta"])
        problem, verified = _verify(out, meta, wanted)
      except Exception as e:  # orbax raises several types for damaged files
        problem, cause = f"is unreadable ({_one_line(e)})", e
        _quiet_closed_loop_errors()
      if problem is None:
        break
      skipped.append({"checkpoint": k, "reason": problem})
    else:
      tried = "; ".join(f"checkpoint {s['checkpoint']} {s['reason']}" for s in skipped)
      raise CheckpointError(
          f"cannot restore {what} from {self.directory}: none of its {len(skipped)} checkpoint(s) "
          f"reads and verifies (corrupt, incomplete, or written by a different config): {tried}; "
          "delete the directory to start over") from cause
    meta.pop(_INTEGRITY, None)
    message = None
    if skipped:
      message = "; ".join(f"checkpoint {s['checkpoint']} in {self.directory} {s['reason']}"
                          for s in skipped) + f"; restored checkpoint {k} instead"
      logging.warning("%s", message)
    if not verified:
      logging.warning("checkpoint %d in %s has no digests (written before they were recorded); "
                      "restored unverified", k, self.directory)
    self.last_good = k
    self.last_restore = {"directory": self.directory, "checkpoint": k, "newest": candidates[0],
                         "fallback": bool(skipped), "verified": verified, "skipped": skipped,
                         "message": message}
    return out, meta

  def restore_meta(self, n: Optional[int] = None) -> dict:
    """JSON metadata of checkpoint ``n`` (default: the newest whose metadata verifies; arrays
    unchecked)."""
    _, meta = self._restore_verified(
        n, lambda k: ocp.args.Composite(meta=ocp.args.JsonRestore()), (), "metadata")
    return meta

  def restore(self, like_state: Any, like_best: Any = None, n: Optional[int] = None):
    """``(state, meta, best)`` shaped like ``like_state``/``like_best`` from checkpoint ``n``
    (default: the newest that verifies, newer damaged ones skipped with a warning). ``best`` is
    None without ``like_best`` or a stored ``best``.

    Raises:
      CheckpointError: none there, or every candidate is incomplete, corrupt or of another
        structure.
    """
    abstract = lambda t: jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, t)

    def args(k):
      items = {"state": ocp.args.StandardRestore(abstract(like_state)),
               "meta": ocp.args.JsonRestore()}
      if like_best is not None and self._has_item(k, "best"):
        items["best"] = ocp.args.StandardRestore(abstract(like_best))
      return ocp.args.Composite(**items)

    wanted = ("state", "best") if like_best is not None else ("state",)
    out, meta = self._restore_verified(n, args, wanted, "the train state")
    return out["state"], meta, out.get("best") if like_best is not None else None

  def quarantine_skipped(self) -> list:
    """Moves the checkpoints the last restore skipped to ``<directory>.damaged/<n>`` (nothing is
    deleted) and returns their new paths."""
    moved = []
    for s in (self.last_restore or {}).get("skipped", []):
      src = os.path.join(self.directory, str(s["checkpoint"]))
      dst = os.path.join(self.directory + ".damaged", str(s["checkpoint"]))
      if os.path.isdir(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(src, dst)
        moved.append(dst)
    if moved:
      self._mngr.reload()
    return moved

  def close(self):
    self._mngr.close()


def _verify(out, meta: dict, wanted: tuple) -> tuple:
  """``(problem or None, verified)`` of a restored Composite and its metadata: metadata digest,
  every restored item's leaf digests, recorded ``wanted`` items present; no digests: (None,
  False)."""
  record = meta.get(_INTEGRITY)
  if record is None:
    return None, False
  if record.get("algorithm") != _ALGORITHM:
    return f"has digests of an unknown algorithm ({record.get('algorithm')!r})", True
  if _meta_digest({k: v for k, v in meta.items() if k != _INTEGRITY}) != record.get("meta"):
    return "fails its digest (metadata changed)", True
  items = record.get("items", {})
  for item in wanted:
    if item in items and item not in out:
      return f"fails its digest (item {item} is missing)", True
  for item in sorted(set(out.keys()) - {"meta"}):
    want, got = items.get(item), tree_digests(out[item])
    if want is None:
      return f"fails its digest (no digests recorded for item {item})", True
    changed = sorted({k for k in set(want) | set(got) if want.get(k) != got.get(k)})
    if changed:
      more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
      return f"fails its digest ({item} leaf {changed[0]}{more} changed)", True
  return None, True
