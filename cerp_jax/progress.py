"""Progress of a training stage toward its real end: a tqdm bar on a terminal, log lines elsewhere.

Stage 1 measures progress in entries pruned toward the last budget (it ends when that budget is
met, not at ``prune.max_epochs``); stage 2 in steps toward the early-stopping horizon, which moves
as validation improves. On a terminal, log lines are printed above the bar (through ``tqdm.write``)
instead of breaking it; when stderr is not a terminal, a log line every ``log_every_s`` seconds
gives the position, steps/s and the ETA. The ETA is the time left at the rate of the last
``eta_window_s`` seconds, not at the mean rate since the start: stage 1 prunes faster as its
thresholds rise, so any rate so far overstates the time left, and the mean rate the most (`make
train`'s stage 1, 37 min: 22 min in, the mean rate said 66 min left, the last 5 minutes' rate 29,
the truth 15).
"""

from __future__ import annotations

import collections
import contextlib
import sys
import time
from typing import Optional

from absl import logging
from tqdm import tqdm


class _TqdmStream:
  """A file-like stream that prints through ``tqdm.write`` (keeps an active bar intact)."""

  def write(self, s: str):
    if s.strip():
      tqdm.write(s.rstrip("\n"), file=sys.stderr)

  def flush(self):
    sys.stderr.flush()


@contextlib.contextmanager
def _logs_above_bar(active: bool):
  """Routes absl's log lines through ``tqdm.write`` while a bar is shown.

  (``tqdm.contrib.logging.logging_redirect_tqdm`` only swaps ``logging.StreamHandler`` instances;
  absl's handler wraps one, so its inner stream is swapped here instead.)
  """
  handler = getattr(logging.get_absl_handler(), "python_handler", None)
  if not active or handler is None or not hasattr(handler, "stream"):
    yield
    return
  old = handler.stream
  handler.stream = _TqdmStream()
  try:
    yield
  finally:
    handler.stream = old


def format_seconds(s: Optional[float]) -> str:
  if s is None or s != s or s == float("inf"):
    return "?"
  s = int(round(s))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
  """A position ``0 ≤ n ≤ total`` in ``unit`` plus the step count, shown honestly.

  A context manager (``with Progress(...) as bar:``) that closes itself on exit, or call
  :meth:`close`.

  Args:
    desc: label (``'prune'``, ``'retrain sparsity_0.5000'``).
    total: units to the end as known now (:meth:`set_total` moves it).
    initial: position at start (a resumed run).
    step: the training step at start.
    unit: what ``n`` counts (``'entries'``, ``'step'``).
    bar: show a tqdm bar if stderr is a terminal (False: log lines only).
    log_every_s: seconds between log lines when no bar is shown (0: never).
    eta_window_s: the ETA divides what is left by the rate over this many recent seconds.
  """

  def __init__(self, desc: str, total: int, initial: int = 0, step: int = 0, unit: str = "step",
               bar: bool = True, log_every_s: float = 60.0, eta_window_s: float = 300.0):
    self.desc, self.unit, self.total = desc, unit, max(int(total), 0)
    self.n = min(max(int(initial), 0), self.total)
    self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit, dynamic_ncols=True,
                     mininterval=2.0, disable=None if bar else True)
    self._shown = not self._bar.disable
    self._log_every = log_every_s
    self._t0 = self._last_log = time.perf_counter()
    self._step0, self.step = int(step), int(step)
    self._based = False  # rates count from the first update (after compilation, resume jumps)
    self._eta_window = eta_window_s
    self._recent = collections.deque()  # (time, n) samples of the updates in the ETA's window
    self._redirect = _logs_above_bar(self._shown)
    self._redirect.__enter__()

  def steps_per_s(self) -> float:
    dt = time.perf_counter() - self._t0
    return (self.step - self._step0) / dt if dt > 0 else 0.0

  def eta_s(self) -> Optional[float]:
    """Seconds to ``total`` at the rate of the last ``eta_window_s`` seconds (since the first
    update while the run is younger than that); None while nothing has moved in that window."""
    if not self._recent:
      return None
    t_old, n_old = self._recent[0]
    dt, moved = time.perf_counter() - t_old, self.n - n_old
    return (self.total - self.n) * dt / moved if moved > 0 else None

  def set_total(self, total: int):
    self.total = max(int(total), self.n)
    self._bar.total = self.total
    self._bar.refresh()

  def update(self, n: int, step: int, **postfix):
    """Moves to position ``n`` (clipped to [current, total]) at training step ``step``."""
    n = min(max(int(n), self.n), self.total)
    self._bar.update(n - self.n)
    self.n, self.step = n, int(step)
    now = time.perf_counter()
    if not self._based:
      self._based, self._t0, self._step0 = True, now, self.step
    if not self._recent or now - self._recent[-1][0] >= 1.0:
      self._recent.append((now, self.n))  # at most one sample a second: ≤ eta_window_s of them
    while len(self._recent) > 1 and now - self._recent[1][0] >= self._eta_window:
      self._recent.popleft()  # the oldest kept sample is the last one at least a window old
    if postfix:
      self._bar.set_postfix(postfix, refresh=False)
    if not self._shown and self._log_every and now - self._last_log >= self._log_every:
      self._last_log = now
      logging.info("%s", self.line(**postfix))

  def line(self, **postfix) -> str:
    pct = 100.0 * self.n / self.total if self.total else 100.0
    extra = "".join(f", {k} {v}" for k, v in postfix.items())
    return (f"{self.desc}: {self.n:,}/{self.total:,} {self.unit} ({pct:.1f} %), step {self.step:,} "
            f"at {self.steps_per_s():.1f} steps/s, ETA {format_seconds(self.eta_s())}{extra}")

  def close(self):
    """Closes the bar and gives the log lines their stream back."""
    self._bar.close()
    self._redirect.__exit__(None, None, None)

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
