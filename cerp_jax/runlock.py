"""One process per workdir: an exclusive ``fcntl.flock`` on ``WORKDIR/.lock``, released with its
holder (never stale); the file records the holder's pid, host, command and start time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time

LOCK_NAME = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir's lock; ``holder`` names it (pid, host, start,
  command)."""

  def __init__(self, message: str, holder: str = ""):
    super().__init__(message)
    self.holder = holder


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      h = json.load(f)
    return f"pid {h['pid']} on {h['host']} since {h['started']} ({h['command']})"
  except (OSError, ValueError, KeyError):
    return "another process (no holder recorded yet)"


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True, name: str = LOCK_NAME):
  """Holds the lock of ``workdir`` (an existing directory) for the ``with`` body; a no-op when
  not ``enabled`` (every process but 0 of a multi-process run). ``name``: the lock file, for a
  second lock of the same folder held around the first (sweep.py's run lock around train.py's).

  Raises:
    WorkdirBusyError: a live process holds the lock; the message names it.
    OSError: the lock file cannot be created (e.g. a read-only workdir) or the file system cannot
      lock files (ENOLCK, e.g. NFS without locking), naming the path.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, name)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
        raise OSError(e.errno, f"{path}: this file system cannot lock files "
                      f"({os.strerror(e.errno)}); use a workdir on a local disk") from None
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      holder = _holder(path)
      raise WorkdirBusyError(f"{workdir} is in use by {holder}; wait for it to finish or "
                             "use another --workdir", holder) from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock
