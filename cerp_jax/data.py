"""Interaction data: counts, validation, splits, and the one loader every entry point calls.

:func:`load_interactions` turns ``config.data`` into an :class:`Interactions`: user × item CSR
matrices (``scipy.sparse``) for the train, validation and test splits, plus the user and item
counts. Users and items share one entity-id space downstream (item ``i`` is entity
``num_users + i``); here ids are kept per type. Files are read by :mod:`cerp_jax.readers` (LightGCN
text, MovieLens-100K ``u.data``), or through TFDS (:mod:`cerp_jax.tfds_builder`) when
``config.data.loader = 'tfds'``.

Counts: from ``user_list.txt``/``item_list.txt`` when present, else the config's
``num_users``/``num_items`` when set (> 0), else max id + 1 over all splits. Ids at or beyond the
count are errors. Duplicate (user, item) pairs inside one file are de-duplicated with a warning that
names the file and the first duplicate's line (the authors' loaders keep them, and a duplicate
positive would count twice in Recall's denominator). A pair present in two splits is an error.
MovieLens-100K has no test file: a seeded per-user split holds out ``config.data.test_fraction``.

Limits, checked before any array is sized by a count: a count from max id + 1 may be at most
``max(PLAUSIBLE_FLOOR, PLAUSIBLE_FACTOR × distinct ids)`` (a larger id is taken for a typo), and
users + items at most :data:`MAX_ENTITIES`. Messages show ids as the file has them (1-based in
``u.data``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Optional, Sequence

from absl import logging
import numpy as np
import scipy.sparse as sp

from cerp_jax import readers

# Default data root: ``../shared/data`` beside the repository root.
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = _REPO_ROOT.parent / "shared" / "data"


# The readers' names, re-exported: every data path raises the same DataError.
DataError = readers.DataError
Pairs = readers.Pairs
read_lightgcn_file = readers.read_lightgcn_file
read_movielens_100k = readers.read_movielens_100k
load_lightgcn = readers.load_lightgcn


def data_root(config_root: Optional[str] = None) -> pathlib.Path:
  """Returns the data root: the config's value, else ``$CERP_DATA_DIR``, else ``../shared/data``."""
  if config_root:
    return pathlib.Path(config_root).expanduser()
  env = os.environ.get("CERP_DATA_DIR")
  if env:
    return pathlib.Path(env).expanduser()
  return DEFAULT_DATA_ROOT


@dataclasses.dataclass(frozen=True)
class Interactions:
  """Implicit-feedback interactions, split per user.

  Attributes:
    name: dataset name, for logs.
    num_users: number of users U (int).
    num_items: number of items I (int).
    train: ``[U, I]`` CSR float32 matrix of ones: training positives (validation removed).
    valid: ``[U, I]`` CSR of validation positives (all-zero when there is no validation split).
    test: ``[U, I]`` CSR of test positives.
  """

  name: str
  num_users: int
  num_items: int
  train: sp.csr_matrix
  valid: sp.csr_matrix
  test: sp.csr_matrix

  @property
  def num_entities(self) -> int:
    """N = U + I, the size of the shared user/item id space."""
    return self.num_users + self.num_items

  def summary(self) -> str:
    """One line with the counts, for logs."""
    no_train_users = int(np.sum(np.diff(self.train.indptr) == 0))
    no_train_items = int(np.sum(np.bincount(self.train.indices, minlength=self.num_items) == 0))
    return (f"{self.name}: {self.num_users} users, {self.num_items} items, train {self.train.nnz}, "
            f"valid {self.valid.nnz}, test {self.test.nnz}; {no_train_users} users and "
            f"{no_train_items} items have no training interaction")


# Largest number of entities (users + items): entity ids are int32 downstream.
MAX_ENTITIES = 2**31 - 1
# A count from max id + 1 may be at most max(PLAUSIBLE_FLOOR, PLAUSIBLE_FACTOR × distinct ids seen);
# real data numbers its users and items densely (max id + 1 = distinct ids), so a larger max id is
# taken for a typo rather than sizing every array by it.
PLAUSIBLE_FLOOR = 2**16
PLAUSIBLE_FACTOR = 8


def _check_counts(splits: Sequence[Pairs], num_users: int, num_items: int, source: dict) -> None:
  """Refuses counts that no array may be sized by; allocates nothing sized by an id.

  A count from max id + 1 (``source[name] == "max id + 1"``) above ``max(PLAUSIBLE_FLOOR,
  PLAUSIBLE_FACTOR × distinct ids of that kind over all splits)`` is refused as a typo, naming the
  largest id where it first occurs. ``num_users + num_items`` must be at most :data:`MAX_ENTITIES`.

  Raises:
    DataError: ``path:line: <kind> id <id as in the file> …`` for an implausible id; the counts and
      their sources for too many entities.
  """
  for name, count in (("user", num_users), ("item", num_items)):
    if source[name] != readers.FROM_MAX or count <= PLAUSIBLE_FLOOR:
      continue
    ids = [getattr(p, name + "s") for p in splits]
    distinct = int(np.unique(np.concatenate(ids)).size)
    limit = max(PLAUSIBLE_FLOOR, PLAUSIBLE_FACTOR * distinct)
    if count > limit:
      p, k = _first_occurrence(splits, name + "s", count - 1)
      raise DataError(
          f"{p.path}:{p.lines[k]}: {name} id {count - 1 + p.id_base} looks like a typo: it would "
          f"make {count} {name}s (counted from the largest id), more than max({PLAUSIBLE_FLOOR}, "
          f"{PLAUSIBLE_FACTOR} × {distinct} distinct {name} ids) = {limit}; set "
          f"config.data.num_{name}s if it is meant")
  if num_users + num_items > MAX_ENTITIES:
    raise DataError(f"{num_users} users ({source['user']}) + {num_items} items ({source['item']}) "
                    f"is more than {MAX_ENTITIES} entities (entity ids are int32)")


def _first_occurrence(splits: Sequence[Pairs], field: str, value: int) -> tuple[Pairs, int]:
  """The first split whose ``field`` ('users' | 'items') holds ``value``, and the value's index."""
  for p in splits:
    hit = np.flatnonzero(getattr(p, field) == value)
    if hit.size:
      return p, int(hit[0])
  raise ValueError(f"{field} {value} in no split")


def _check_range(pairs: Pairs, num_users: int, num_items: int, source: dict) -> None:
  """Raises DataError naming file, line and id (as in the file) for the first id ≥ its count."""
  for name, ids, count in (("user", pairs.users, num_users), ("item", pairs.items, num_items)):
    bad = np.nonzero(ids >= count)[0]
    if bad.size:
      k, b = bad[0], pairs.id_base
      raise DataError(f"{pairs.path}:{pairs.lines[k]}: {name} id {ids[k] + b} out of range: "
                      f"{source[name]} gives {count} {name}s (valid ids {b}..{count - 1 + b})")


def _to_csr(pairs: Pairs, num_users: int, num_items: int) -> sp.csr_matrix:
  """Builds the user × item CSR, de-duplicating repeated pairs with a warning."""
  keys = pairs.users * num_items + pairs.items
  _, first, counts = np.unique(keys, return_index=True, return_counts=True)
  if (counts > 1).any():
    dup_mask = np.ones(len(keys), bool)
    dup_mask[first] = False
    k = np.nonzero(dup_mask)[0][0]
    b = pairs.id_base
    logging.warning("%s:%d: duplicate (user %d, item %d); %d duplicate pairs dropped", pairs.path,
                    pairs.lines[k], pairs.users[k] + b, pairs.items[k] + b, int(dup_mask.sum()))
  m = sp.csr_matrix((np.ones(len(keys), np.float32), (pairs.users, pairs.items)),
                    shape=(num_users, num_items))
  m.sum_duplicates()
  m.data[:] = 1.0
  m.sort_indices()
  return m


def _check_disjoint(a: sp.csr_matrix, b: sp.csr_matrix, name_a: str, name_b: str,
                    pairs_b: Optional[Pairs] = None) -> None:
  """Raises DataError if a (user, item) pair is in both splits, naming the file and line of ``b``."""
  both = a.multiply(b)
  if both.nnz:
    both = both.tocoo()
    u, i = int(both.row[0]), int(both.col[0])
    where = name_b
    if pairs_b is not None:
      k = np.nonzero((pairs_b.users == u) & (pairs_b.items == i))[0]
      if k.size:
        where = f"{pairs_b.path}:{pairs_b.lines[k[0]]}"
    raise DataError(f"{where}: (user {u}, item {i}) is also in {name_a}; {both.nnz} (user, item) "
                    f"pairs are in both {name_a} and {name_b} (splits must be disjoint)")


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


def split_per_user(m: sp.csr_matrix, fraction: float, seed: int, min_items: int,
                   ) -> tuple[sp.csr_matrix, sp.csr_matrix]:
  """Moves ``round(fraction · n_u)`` (at least 1) of each user's items to a held-out matrix.

  Users with fewer than ``min_items`` items keep all of them; at least one item always stays. The
  choice is a seeded uniform permutation per user, vectorised (no per-user Python loop).

  Args:
    m: ``[U, I]`` CSR of ones.
    fraction: share of each user's items held out, in (0, 1).
    seed: numpy seed.
    min_items: users with fewer items hold nothing out.

  Returns:
    (kept, held_out), both ``[U, I]`` CSR of ones, disjoint, summing to ``m``.
  """
  m = m.tocsr()
  m.sort_indices()
  counts = np.diff(m.indptr)
  users = np.repeat(np.arange(m.shape[0]), counts)
  rng = np.random.default_rng(seed)
  order = np.lexsort((rng.random(m.nnz), users))  # random order within each user
  rank = np.empty(m.nnz, np.int64)
  rank[order] = np.arange(m.nnz) - np.repeat(m.indptr[:-1], counts)
  n_out = np.maximum(1, np.floor(fraction * counts + 0.5)).astype(np.int64)
  n_out = np.where(counts < max(min_items, 2), 0, np.minimum(n_out, counts - 1))
  held = rank < np.repeat(n_out, counts)
  make = lambda sel: sp.csr_matrix(
      (np.ones(int(sel.sum()), np.float32), (users[sel], m.indices[sel])), shape=m.shape)
  return make(~held), make(held)


# ----------------------------------------------------------------------------------------------
# Loading a dataset
# ----------------------------------------------------------------------------------------------


def _lightgcn_splits(dc, directory: pathlib.Path):
  """(train ``[U, I]`` CSR, test CSR, U, I) of a LightGCN folder, read by the loader ``dc.loader``
  names: 'tfds' (:func:`cerp_jax.tfds_builder.load_pairs`), else the text reader."""
  counts = dict(num_users=dc.get("num_users", 0), num_items=dc.get("num_items", 0))
  if dc.get("loader", "text") == "tfds":
    # tensorflow_datasets is heavy: imported only when a config asks for it.
    from cerp_jax import tfds_builder  # pylint: disable=g-import-not-at-top
    train_pairs, test_pairs, nu, ni, source = tfds_builder.load_pairs(
        directory, name=dc.name, tfds_data_dir=dc.get("tfds_data_dir") or None, **counts)
  else:
    train_pairs, test_pairs, nu, ni, source = readers.load_lightgcn(directory, dc.name, **counts)
  _check_counts((train_pairs, test_pairs), nu, ni, source)
  for p in (train_pairs, test_pairs):
    _check_range(p, nu, ni, source)
  train = _to_csr(train_pairs, nu, ni)
  test = _to_csr(test_pairs, nu, ni)
  _check_disjoint(train, test, train_pairs.path, test_pairs.path, test_pairs)
  return train, test, nu, ni


def _ml100k_splits(dc, directory: pathlib.Path):
  """(train ``[U, I]`` CSR, test CSR, U, I) of MovieLens-100K's ``u.data``, split per user."""
  pairs = readers.read_movielens_100k(directory / "u.data")
  nu = dc.get("num_users", 0) or int(pairs.users.max()) + 1
  ni = dc.get("num_items", 0) or int(pairs.items.max()) + 1
  source = {"user": "the config" if dc.get("num_users", 0) else readers.FROM_MAX,
            "item": "the config" if dc.get("num_items", 0) else readers.FROM_MAX}
  _check_counts((pairs,), nu, ni, source)
  _check_range(pairs, nu, ni, source)
  full = _to_csr(pairs, nu, ni)
  train, test = split_per_user(full, dc.test_fraction, dc.split_seed, min_items=2)
  return train, test, nu, ni


def load_interactions(config) -> Interactions:
  """Builds the :class:`Interactions` a config asks for: the one entry point for every loader.

  Config fields (``config.data``): ``format`` ('lightgcn' | 'ml100k'), ``path`` (folder under the
  data root, or absolute), ``root``, ``loader`` ('text' | 'tfds'), ``num_users``/``num_items`` (0 =
  automatic), ``valid_fraction`` (0 disables validation), ``valid_min_items``, ``test_fraction``
  (ml100k), ``split_seed``.

  Counts and ids are checked (:func:`_check_counts`, then every id against its count) before any
  array is sized by them.

  Raises:
    DataError: malformed or out-of-range data, an implausibly large id when a count comes from max
      id + 1, more than :data:`MAX_ENTITIES` users + items, empty splits, overlapping splits.
  """
  dc = config.data
  root = data_root(dc.get("root") or None)
  directory = pathlib.Path(dc.path)
  if not directory.is_absolute():
    directory = root / directory
  if dc.format == "lightgcn":
    train, test, nu, ni = _lightgcn_splits(dc, directory)
  elif dc.format == "ml100k":
    train, test, nu, ni = _ml100k_splits(dc, directory)
  else:
    raise ValueError(f"config.data.format={dc.format!r}: expected 'lightgcn' or 'ml100k'")
  _check_disjoint(train, test, "train", "test")
  if dc.valid_fraction > 0:
    train, valid = split_per_user(train, dc.valid_fraction, dc.split_seed + 1,
                                  min_items=dc.valid_min_items)
  else:
    valid = sp.csr_matrix(train.shape, dtype=np.float32)
  for name, m in (("train", train), ("test", test)):
    if m.nnz == 0:
      raise DataError(f"{directory}: the {name} split is empty")
  data = Interactions(dc.name, nu, ni, train, valid, test)
  logging.info("%s", data.summary())
  return data


def csr_rows(m: sp.csr_matrix, rows: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(row-in-batch, column) COO pairs of the given rows of a CSR matrix, vectorised.

  Returns:
    ``r`` int32 ``[nnz_rows]`` (position of the row in ``rows``) and ``c`` int32 column ids.
  """
  rows = np.asarray(rows)
  starts, ends = m.indptr[rows], m.indptr[rows + 1]
  lens = ends - starts
  r = np.repeat(np.arange(len(rows), dtype=np.int32), lens)
  offsets = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
  c = m.indices[np.repeat(starts, lens) + offsets].astype(np.int32)
  return r, c
