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
