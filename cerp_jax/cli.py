"""Command-line handling and logging set-up for the entry points (train.py, eval.py, sweep.py,
recommend.py, the benchmarks): turn every bad command line or input into one ``error: …`` line
(exit status 2) instead of a traceback, keep cerp_jax's log lines and silence orbax's per-save
chatter. Imports neither JAX nor the rest of the package (recommend.py runs without JAX)."""

import difflib
import logging as py_logging
import os
import re
import sys

from absl import flags
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


# The package's error types that mean bad input, config or checkpoints: (module, class).
_PACKAGE_ERRORS = (("cerp_jax.data", "DataError"), ("cerp_jax.embeddings", "BucketSizeError"),
                   ("cerp_jax.checkpoint", "CheckpointError"))


def expected_errors() -> tuple:
  """Error types that mean bad input, config or checkpoints (a clear message, no traceback).

  Imports nothing: an error type of a module not imported yet cannot have been raised, so only
  those of the modules already loaded are named (besides ValueError, OSError and RuntimeError, of
  which they are all subclasses). recommend.py thus stays free of JAX.
  """
  named = tuple(getattr(sys.modules[m], name) for m, name in _PACKAGE_ERRORS if m in sys.modules)
  return named + (ValueError, OSError, RuntimeError)


def error_message(e: BaseException) -> str:
  """One line for an expected error: an OS error names its path (``path: reason``)."""
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f"{e.filename}: {e.strerror.lower()}"
  return str(e)


def run_cli(fn, *args, **kwargs):
  """Runs an entry point's body: expected errors print ``error: <message>`` (exit 2, no traceback;
  ``CERP_TRACEBACK=1`` shows it), Ctrl-C says how to resume (exit 130)."""
  try:
    return fn(*args, **kwargs)
  except KeyboardInterrupt:
    print("\ninterrupted: rerun the same command to resume from the last checkpoint",
          file=sys.stderr)
    sys.exit(130)
  except expected_errors() as e:  # pylint: disable=catching-non-exception
    if os.environ.get("CERP_TRACEBACK"):
      raise
    print(f"error: {error_message(e)}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------------------------
# Command line: absl flags and ml_collections config files
# ----------------------------------------------------------------------------------------------

_HELP = frozenset(("--help", "-help", "-h", "-?", "--helpshort", "-helpshort"))


class CliError(ValueError):
  """A bad command line; the message names the flag or config field and says what is wrong."""


def cli_error(message: str):
  """Prints ``error: <message>`` to stderr and exits with status 2 (a bad command line or input)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list) -> list:
  """The ``flags_parser`` of every entry point: ``app.run(main, flags_parser=cli.parse_flags)``.

  Parses ``argv`` into absl's ``FLAGS`` as absl's own parser does, except that:

  * a bad command line prints one line ``error: <flag or field>: <what is wrong>`` to stderr and
    exits with status 2 (``CERP_TRACEBACK=1`` raises the exception instead): a config file that does
    not exist, an unknown config field (with the closest field's name), a value of the wrong type
    (also inside a tuple field), a bad preset argument, an unknown or missing flag;
  * ``--help`` (``-h``, ``-?``, ``--helpshort``) prints the script's docstring and its own flags,
    how to override config fields, and exits 0; ``--helpfull`` stays absl's list of every flag.

  Args:
    argv: the command line, program name first (``sys.argv``).

  Returns:
    the arguments left after the flags, program name first.
  """
  if _HELP.intersection(argv[1:argv.index("--") if "--" in argv else len(argv)]):
    _print_help()
    sys.exit(0)
  try:
    _check_config_files(argv)
    rest = flags.FLAGS(argv)
    _check_tuple_overrides()
    return rest
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("CERP_TRACEBACK"):
      raise
    cli_error(_describe(e, argv))


def _print_help():
  """absl's short help (docstring + the main module's flags) plus the config-override syntax."""
  from absl import app  # pylint: disable=g-import-not-at-top
  app.usage(shorthelp=True, writeto_stdout=True)
  for name in _config_file_flags():
    print(f"  --{name}.<field>=<value>: overrides a field of the --{name} file (configs/default.py\n"
          "    lists every field); unknown fields and values of the wrong type are refused.")
  print("\nTry --helpfull to see the flags of every library as well.")


def _config_file_flags() -> list:
  """Names of the flags defined with ``config_flags.DEFINE_config_file``."""
  from ml_collections.config_flags import config_flags as cf  # pylint: disable=g-import-not-at-top
  return [n for n in flags.FLAGS if isinstance(flags.FLAGS[n].parser, cf.ConfigFileFlagParser)]


def _flag_values(argv: list, name: str) -> list:
  """Values given to flag ``name`` in ``argv`` (``--name=v``, ``--name v``, one dash too)."""
  args = argv[1:argv.index("--") if "--" in argv else len(argv)]
  out = []
  for i, a in enumerate(args):
    m = re.fullmatch(rf"--?{re.escape(name)}(?:=(.*))?", a, re.S)
    if m:
      value = m.group(1) if m.group(1) is not None else (args[i + 1] if i + 1 < len(args) else "")
      out.append(value)
  return out


def _check_config_files(argv: list):
  """Refuses a ``--config`` file that does not exist, before ml_collections tries to load it.

  Raises:
    CliError: naming the flag and the path.
  """
  for name in _config_file_flags():
    for value in _flag_values(argv, name):
      path = value.split(":", 1)[0]
      if not os.path.isfile(path):
        where = "" if os.path.isabs(path) else f" (relative to the current directory {os.getcwd()})"
        raise CliError(f"--{name}={value}: config file {path!r} not found{where}")


def _check_tuple_overrides():
  """Refuses a tuple field override whose elements have another type than the config's default
  (``--config.target_sparsities=abc`` would give ``('abc',)``; ml_collections accepts it).

  Raises:
    CliError: naming the field, the value and the expected element type.
  """
  for cfg in _config_file_flags():
    for name in flags.FLAGS:
      flag = flags.FLAGS[name]
      if not (name.startswith(cfg + ".") and flag.present and isinstance(flag.default, (list, tuple))
              and flag.default):
        continue
      want = _element_type(flag.default)
      got = tuple(flag.value)
      if want is not None and not all(_element_type([v]) in _ACCEPTS[want] for v in got):
        raise CliError(f"--{name}: expected a tuple of {want.__name__}, got {got!r}")


_ACCEPTS = {float: (float, int), int: (int,), str: (str,), bool: (bool,)}


def _element_type(values):
  """The one type of ``values``' elements among float, int, str and bool, else None."""
  types = {bool if isinstance(v, bool) else type(v) for v in values}
  if types <= {int, float} and float in types:
    return float
  return types.pop() if len(types) == 1 and next(iter(types)) in _ACCEPTS else None


def _describe(e: Exception, argv: list) -> str:
  """One line for an exception raised while parsing the command line."""
  if isinstance(e, CliError):
    return str(e)
  if isinstance(e, flags.IllegalFlagValueError):
    return _illegal_value(str(e))
  if isinstance(e, flags.Error):
    return _one_line(str(e))
  if isinstance(e, (AttributeError, KeyError)):  # ml_collections: an override of an unknown field
    unknown = _unknown_field(argv)
    if unknown:
      return unknown
  return f"{type(e).__name__}: {_one_line(str(e))}"


def _illegal_value(message: str) -> str:
  """absl's ``flag --name=value: reason`` as ``--name=value: expected a float, got 'x'``, or
  ``--name is required``."""
  m = re.match(r"flag --([^=\s]+)=(.*?): (.*)$", message, re.S)
  if not m:
    return _one_line(message)
  name, value, reason = m.groups()
  if "must have a value other than None" in reason:
    return f"--{name} is required"
  ftype = flags.FLAGS[name].parser.flag_type() if name in flags.FLAGS else ""
  if ftype in ("int", "float", "bool"):
    article = "an" if ftype == "int" else "a"
    return f"--{name}={value}: expected {article} {ftype}, got {value!r}"
  return f"--{name}={value}: {_one_line(reason)}"


def _one_line(message: str) -> str:
  """A multi-line message (ml_collections embeds tracebacks) reduced to its first line plus the
  final ``SomeError: reason`` line's reason."""
  message = str(message).strip()
  if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":  # a KeyError's repr
    message = message[1:-1]
  lines = [l.strip() for l in message.splitlines() if l.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else ""
  m = re.match(r"^[\w.]+(?:Error|Exception): (.*)$", lines[-1])
  if m and "Error whilst parsing config file" in lines[0]:
    return m.group(1)
  return f"{lines[0]} {m.group(1) if m else lines[-1]}"


def _unknown_field(argv: list):
  """``--config.a.b: unknown config field 'a.b' (did you mean 'a.c'?)`` for the first override in
  ``argv`` that names no field of its config file, else None."""
  from ml_collections.config_flags import config_flags as cf  # pylint: disable=g-import-not-at-top
  for name in _config_file_flags():
    values = _flag_values(argv, name)
    if not values:
      continue
    try:
      config = cf.ConfigFileFlagParser(name, lock_config=False).parse(values[-1])
    except Exception:  # pylint: disable=broad-except
      return None
    for a in argv[1:]:
      m = re.match(rf"--?(?:no)?{re.escape(name)}\.([\w.]+)", a)
      if m:
        bad = _first_unknown(config, m.group(1).split("."))
        if bad:
          return f"--{name}.{m.group(1)}: {bad}"
  return None


def _first_unknown(config, parts: list):
  """What is wrong with the field path ``parts`` in ``config`` (None if it exists)."""
  node = config
  for i, part in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if part not in keys:
      close = difflib.get_close_matches(part, keys, n=1)
      hint = f" (did you mean {'.'.join(parts[:i] + close)!r}?)" if close else ""
      return f"unknown config field {'.'.join(parts[:i + 1])!r}{hint}"
    node = node[part]
  return None
