"""One process at a time per workdir: an exclusive lock on ``WORKDIR/.lock``.

The lock is a kernel advisory lock (``fcntl.flock``) on the file, so it ends with its holder: a
killed process leaves the file behind but never a stale lock. The file holds the holder's
``pid``, host, command and start time, which the refusal names. Only process 0 of a multi-host run
takes it (the other processes write nothing to the workdir).
"""

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
  """Another live process holds the workdir's lock."""


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      h = json.load(f)
    return f"pid {h['pid']} on {h['host']} since {h['started']} ({h['command']})"
  except (OSError, ValueError, KeyError):
    return "another process (no holder recorded yet)"


@contextlib.contextmanager
def hold(workdir: str, enabled: bool = True):
  """Holds ``workdir``'s lock for the ``with`` body.

  Args:
    workdir: an existing directory.
    enabled: False makes this a no-op (non-primary processes of a multi-host run).

  Raises:
    WorkdirBusyError: a live process holds the lock; the message names it.
    OSError: the lock file cannot be created (e.g. a read-only workdir), naming the path.
  """
  if not enabled:
    yield
    return
  path = os.path.join(workdir, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirBusyError(f"{workdir} is in use by {_holder(path)}; wait for it to finish or "
                             "use another --workdir") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the flock
