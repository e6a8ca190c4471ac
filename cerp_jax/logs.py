"""Logging set-up for the entry points: keep cerp_jax's lines, silence orbax's per-save chatter."""

import logging as py_logging

from absl import logging


class _DropLibraryInfo(py_logging.Filter):
  """Drops INFO (and below) records emitted from inside orbax / TFDS / jax internals."""

  _NOISY = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/", "/etils/")

  def filter(self, record):
    if record.levelno > py_logging.INFO:
      return True
    return not any(s in record.pathname for s in self._NOISY)


def setup():
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  logging.get_absl_handler().use_absl_log_file = False


def expected_errors() -> tuple:
  """Error types that mean bad input, config or checkpoints (a clear message, no traceback)."""
  from cerp_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from cerp_jax import data  # pylint: disable=g-import-not-at-top
  from cerp_jax import embeddings  # pylint: disable=g-import-not-at-top
  return (data.DataError, embeddings.BucketSizeError, checkpoint.CheckpointError, ValueError,
          FileNotFoundError, RuntimeError)


def run_cli(fn, *args, **kwargs):
  """Runs an entry point's body: expected errors print ``error: <message>`` (exit 2, no traceback;
  ``CERP_TRACEBACK=1`` shows it), Ctrl-C says how to resume (exit 130)."""
  import os  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  try:
    return fn(*args, **kwargs)
  except KeyboardInterrupt:
    print("\ninterrupted: rerun the same command to resume from the last checkpoint",
          file=sys.stderr)
    sys.exit(130)
  except expected_errors() as e:  # pylint: disable=catching-non-exception
    if os.environ.get("CERP_TRACEBACK"):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
