"""Interaction files → (user, item, line) pairs: the LightGCN text and MovieLens-100K readers.

Formats:
  * LightGCN text (``train.txt`` / ``test.txt``): one line per user, ``user item item …``, 0-based
    ids; a line may hold a user with no items (Gowalla, Amazon-Book, ML-1M m1).
  * MovieLens-100K raw ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``, 1-based ids; every
    rating is an implicit interaction.

Every data path (the text loader, :mod:`cerp_jax.tfds_builder`, :mod:`cerp_jax.data`) reads files
with these functions, so a malformed file raises the same :class:`DataError` (file, line, token)
whichever loader a config names. ``cerp_jax.data`` re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Optional

import numpy as np

# Where a count comes from when neither a list file nor the config gives it.
FROM_MAX = "max id + 1"


class DataError(ValueError):
  """Malformed or inconsistent input data. The message names the file, line and value."""


@dataclasses.dataclass(frozen=True)
class Pairs:
  """(user, item) pairs read from one file, with the 1-based line each came from.

  Ids are 0-based; ``id_base`` is the file's first id (1 for ``u.data``), so that messages show an
  id as the file has it (``id + id_base``).
  """

  path: str
  users: np.ndarray  # [n] int64
  items: np.ndarray  # [n] int64
  lines: np.ndarray  # [n] int64, 1-based line numbers
  num_lines: int
  id_base: int = 0


def read_lightgcn_file(path: os.PathLike | str) -> Pairs:
  """Reads one LightGCN-format file (``user item item …`` per line, 0-based ids).

  Args:
    path: the file.

  Returns:
    Pairs with ``users``, ``items`` int64 ``[n]`` and 1-based ``lines``.

  Raises:
    DataError: missing or empty file, a non-integer token, bytes that are not UTF-8, a negative id
      (message names file, line, token).
  """
  path = str(path)
  users, items, lines = [], [], []
  num_lines = 0
  for lineno, line in _numbered_lines(path):
    num_lines = lineno
    tokens = line.split()
    if not tokens:
      continue
    try:
      ids = np.array([int(t) for t in tokens], dtype=np.int64)
    except ValueError:
      bad = next(t for t in tokens if not _is_int(t))
      _raise_if_not_utf8(path, lineno, bad)
      raise DataError(f"{path}:{lineno}: non-integer token {bad!r}") from None
    except OverflowError:
      bad = next(t for t in tokens if abs(int(t)) > np.iinfo(np.int64).max)
      raise DataError(f"{path}:{lineno}: id {bad} is beyond any id count (int64)") from None
    if (ids < 0).any():
      bad = int(ids[ids < 0][0])
      raise DataError(f"{path}:{lineno}: negative id {bad}")
    n = len(ids) - 1
    users.append(np.full(n, ids[0], dtype=np.int64))
    items.append(ids[1:])
    lines.append(np.full(n, lineno, dtype=np.int64))
  if num_lines == 0:
    raise DataError(f"{path}: empty file")
  cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)
  return Pairs(path, cat(users), cat(items), cat(lines), num_lines)


def read_movielens_100k(path: os.PathLike | str) -> Pairs:
  """Reads MovieLens-100K raw ``u.data`` (tab-separated ``user item rating timestamp``, 1-based).

  Every rating counts as an implicit interaction. Ids are shifted to 0-based (``id_base`` = 1, so
  messages downstream show the file's 1-based ids); ``lines`` are file lines, blank lines included.

  Raises:
    DataError: missing/empty file, a line without 4 integer fields, bytes that are not UTF-8, an id
      < 1 (names file, line, value).
  """
  path = str(path)
  users, items, lines = [], [], []
  num_lines = 0
  for lineno, line in _numbered_lines(path):
    num_lines = lineno
    if not line.strip():
      continue
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 4:
      _raise_if_not_utf8(path, lineno, line)
      raise DataError(f"{path}:{lineno}: expected 4 tab-separated fields, got {len(fields)}: "
                      f"{line.strip()!r}")
    for tok in fields:
      if not _is_int(tok):
        _raise_if_not_utf8(path, lineno, tok)
        raise DataError(f"{path}:{lineno}: non-integer token {tok!r}")
    u, i = int(fields[0]), int(fields[1])
    for name, v in (("user", u), ("item", i)):
      if v < 1:
        raise DataError(f"{path}:{lineno}: {name} id {v} < 1 (u.data ids are 1-based)")
      if v > np.iinfo(np.int64).max:
        raise DataError(f"{path}:{lineno}: {name} id {v} is beyond any id count (int64)")
    users.append(u - 1)
    items.append(i - 1)
    lines.append(lineno)
  if not users:
    raise DataError(f"{path}: empty file")
  return Pairs(path, np.asarray(users, np.int64), np.asarray(items, np.int64),
               np.asarray(lines, np.int64), num_lines, id_base=1)


def _numbered_lines(path: str):
  """Yields ``(1-based line number, text)`` of each line of ``path``.

  Raises:
    DataError: the file does not exist.
  """
  if not os.path.exists(path):
    raise DataError(f"{path}: file not found")
  with open(path, "r", encoding="utf-8", errors="surrogateescape") as f:
    yield from enumerate(f, start=1)


def _is_int(token: str) -> bool:
  try:
    int(token)
    return True
  except ValueError:
    return False


def _raise_if_not_utf8(path: str, lineno: int, text: str) -> None:
  """Raises DataError naming file, line and raw bytes when ``text`` holds bytes that are not UTF-8.

  ``text`` was read with ``errors="surrogateescape"``, which keeps such bytes as lone surrogates.
  """
  raw = text.strip().encode("utf-8", "surrogateescape")
  try:
    raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}:{lineno}: {raw!r} is not UTF-8 text (byte 0x{raw[e.start]:02x})"
                    ) from None


def count_from_list(path: pathlib.Path) -> Optional[int]:
  """Number of entries in a LightGCN ``user_list.txt``/``item_list.txt`` (header line excluded), or
  None when the file does not exist.

  Only non-blank lines are counted; their text (original ids, any encoding) is not interpreted.
  """
  if not path.exists():
    return None
  with open(path, "r", encoding="utf-8", errors="surrogateescape") as f:
    n = sum(1 for line in f if line.strip())
  return max(n - 1, 0)


def settle_count(from_list: Optional[int], from_config: int, from_max: int,
                 list_path: os.PathLike | str) -> tuple[int, str]:
  """One count (users or items) and where it came from.

  Args:
    from_list: :func:`count_from_list` of ``list_path`` (None or 0: no list file).
    from_config: ``config.data.num_users``/``num_items`` (≤ 0: automatic).
    from_max: max id + 1 over all splits.
    list_path: the list file, named as the source.

  Returns:
    ``(count, source)``: the list file's count and ``str(list_path)``, else the config's and
    ``'the config'``, else ``from_max`` and :data:`FROM_MAX`.
  """
  if from_list:
    return from_list, str(list_path)
  if from_config and from_config > 0:
    return from_config, "the config"
  return from_max, FROM_MAX


def load_lightgcn(directory: os.PathLike | str, name: str = "", num_users: int = 0,
                  num_items: int = 0) -> tuple[Pairs, Pairs, int, int, str]:
  """Reads ``train.txt``/``test.txt`` of a LightGCN-format folder and settles the counts.

  Returns:
    (train_pairs, test_pairs, num_users, num_items, source) with ``source`` =
    ``{'user': where the user count came from, 'item': …}``. Nothing is sized by the counts here;
    :func:`cerp_jax.data.load_interactions` checks the ids against them.

  Raises:
    DataError: see :func:`read_lightgcn_file`; an empty train or test split.
  """
  directory = pathlib.Path(directory)
  train = read_lightgcn_file(directory / "train.txt")
  test = read_lightgcn_file(directory / "test.txt")
  for p in (train, test):
    if p.users.size == 0:
      raise DataError(f"{p.path}: no (user, item) pairs (empty split)")
  nu_list = count_from_list(directory / "user_list.txt")
  ni_list = count_from_list(directory / "item_list.txt")
  max_u = int(max(train.users.max(), test.users.max())) + 1
  max_i = int(max(train.items.max(), test.items.max())) + 1
  nu, su = settle_count(nu_list, num_users, max_u, directory / "user_list.txt")
  ni, si = settle_count(ni_list, num_items, max_i, directory / "item_list.txt")
  return train, test, nu, ni, {"user": su, "item": si}
