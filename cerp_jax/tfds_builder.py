"""TFDS dataset builder for LightGCN-format interaction data (array_record; no TensorFlow needed).

The builder :class:`LightgcnInteractions` (registered in TFDS as ``lightgcn_interactions``) turns a
LightGCN folder (``train.txt``/``test.txt``, optional ``user_list.txt``/``item_list.txt``) into a TFDS
dataset with one example per non-blank line of the source file (one user and that user's items), in
file order:

  * features: ``user`` (int64 scalar), ``items`` (int64 ``[k]``, ``k >= 0``: a line holding only a
    user id gives an empty array), ``line`` (int64, the 1-based source line, so errors found
    downstream can still name the line); blank lines hold no user and give no example;
  * splits: ``train`` and ``test``;
  * file format: ``array_record``, written by TFDS's standard ``GeneratorBasedBuilder`` path and read
    back through ``tfds.data_source`` / ``builder.as_data_source()`` (TFDS's own numpy decoding; no
    TensorFlow involved);
  * metadata (``builder.info.metadata``, a ``tfds.core.MetadataDict`` saved as ``metadata.json``):
    ``num_users``/``num_items`` (from ``user_list.txt``/``item_list.txt`` when present, else max
    id + 1, as :func:`cerp_jax.readers.load_lightgcn` settles them without config overrides), the
    list counts and max ids separately (so config overrides can be settled the same way on load),
    the source paths, line, example and pair counts, and a SHA-256 fingerprint of the source files.

Builder configs: ``gowalla``, ``amazon_book_kgat``, ``ml1m_m1`` (plus a generic config built on the fly
for any other folder, see :func:`config_for`). Files come from the manual dir
(``tfds.download.DownloadConfig(manual_dir=<the dataset folder>)``). Parsing and validation reuse
:func:`cerp_jax.readers.load_lightgcn` / :func:`cerp_jax.readers.read_lightgcn_file`, so a malformed
file raises the very same :class:`cerp_jax.readers.DataError` (file, line, token) as the plain text
loader. :func:`cerp_jax.data.load_interactions` calls :func:`load_pairs` (this module never
imports :mod:`cerp_jax.data`).

Gowalla only: when the manual dir holds no ``train.txt``, the four files are downloaded from the public
LightGCN-PyTorch repository (:data:`GOWALLA_URL_ROOT`). The connection is probed first with a short
timeout (:data:`PROBE_TIMEOUT_S`, DNS included, run in a daemon thread so nothing can block longer),
so that offline the build fails within seconds with :class:`DownloadError` instead of entering the
retry loop of TFDS's download manager.

Typical use::

  from cerp_jax import tfds_builder
  train, test, nu, ni, source = tfds_builder.load_pairs("../shared/data/gowalla", "gowalla")
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import threading
import time
from typing import Any, Iterator, Optional
import urllib.error
import urllib.request

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from cerp_jax import readers

# Public LightGCN-PyTorch copy of the Gowalla files (train/test/user_list/item_list.txt).
GOWALLA_URL_ROOT = (
    "https://raw.githubusercontent.com/gusye1234/LightGCN-PyTorch/master/data/gowalla/")

# Seconds the connectivity probe may take (DNS + connect + first response) before a download is
# declared failed. Tests shorten it.
PROBE_TIMEOUT_S = 4.0

# Files of a LightGCN folder, in the order they are fingerprinted and downloaded.
SOURCE_FILES = ("train.txt", "test.txt", "user_list.txt", "item_list.txt")

SPLITS = ("train", "test")


class DownloadError(readers.DataError):
  """The public copy of a dataset could not be downloaded (offline, unreachable host, HTTP error)."""


@dataclasses.dataclass(eq=False)
class LightGCNConfig(tfds.core.BuilderConfig):
  """Builder config for one LightGCN-format dataset.

  Attributes:
    folder: folder of the dataset under the data root (``$CERP_DATA_DIR`` or ``../shared/data``), or
      an absolute path for generic configs. Informational: the files are read from the manual dir.
    url_root: base URL of the public copy of the four files (ending in ``/``), or ``""`` when the
      dataset can only come from a manual dir.
  """

  folder: str = ""
  url_root: str = ""


GOWALLA = LightGCNConfig(
    name="gowalla", folder="gowalla", url_root=GOWALLA_URL_ROOT,
    description="Gowalla, LightGCN/NGCF split (29,858 users, 40,981 items, 810,128 train and "
                "217,242 test interactions).")
AMAZON_BOOK_KGAT = LightGCNConfig(
    name="amazon_book_kgat", folder="amazon-book-kgat",
    description="Amazon-Book, KGAT split (70,679 users, 24,915 items); manual dir only.")
ML1M_M1 = LightGCNConfig(
    name="ml1m_m1", folder="movielens-1m-m1",
    description="MovieLens-1M, BARS/LCF 'm1' split in LightGCN format; manual dir only.")

# Accepted spellings of the dataset name (lower case, '-' read as '_') -> builder config name.
_ALIASES = {
    "gowalla": "gowalla",
    "amazon_book_kgat": "amazon_book_kgat",
    "amazon_kgat": "amazon_book_kgat",
    "ml1m_m1": "ml1m_m1",
    "ml_1m_m1": "ml1m_m1",
    "movielens_1m_m1": "ml1m_m1",
    "movielens1m_m1": "ml1m_m1",
}


# ----------------------------------------------------------------------------------------------
# Source files -> one record per user line
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SplitLines:
  """One LightGCN file as user lines: what a split's examples hold.

  Attributes:
    path: the source file (str).
    num_lines: lines in the file, blank ones included (int).
    users: int64 ``[m]``, the user id of each non-blank line, in file order.
    lines: int64 ``[m]``, the 1-based line number of each of those lines (increasing).
    offsets: int64 ``[m + 1]``; line ``k`` holds ``items[offsets[k]:offsets[k + 1]]`` (possibly none).
    items: int64 ``[n]``, all items of the file in file order (``n`` pairs).
  """

  path: str
  num_lines: int
  users: np.ndarray
  lines: np.ndarray
  offsets: np.ndarray
  items: np.ndarray

  def __len__(self) -> int:
    return len(self.users)

  @classmethod
  def from_pairs(cls, pairs: readers.Pairs) -> "SplitLines":
    """The user lines of ``pairs.path``, grouping the pairs
    :func:`~cerp_jax.readers.read_lightgcn_file` read from it.

    ``Pairs`` drop the lines that hold a user but no item; those users are taken from the first
    token of every non-blank line of the (already validated) file.

    Raises:
      readers.DataError: the file no longer matches ``pairs`` (it changed while being read).
    """
    users, lines = [], []
    num_lines = 0
    with open(pairs.path, "r", encoding="utf-8") as f:  # as read_lightgcn_file reads it
      for lineno, text in enumerate(f, start=1):
        num_lines = lineno
        head = text.split(None, 1)
        if head:
          users.append(int(head[0]))
          lines.append(lineno)
    users_a = np.asarray(users, np.int64)
    lines_a = np.asarray(lines, np.int64)
    offsets = np.append(np.searchsorted(pairs.lines, lines_a, side="left"),
                        len(pairs.items)).astype(np.int64)
    counts = np.diff(offsets)
    if (num_lines != pairs.num_lines or not np.array_equal(np.repeat(lines_a, counts), pairs.lines)
        or not np.array_equal(np.repeat(users_a, counts), pairs.users)):
      raise readers.DataError(f"{pairs.path}: the file changed while being read; try again")
    return cls(pairs.path, int(pairs.num_lines), users_a, lines_a, offsets,
               np.asarray(pairs.items, np.int64))

  def to_pairs(self) -> readers.Pairs:
    """The same file as :class:`cerp_jax.readers.Pairs` (one entry per (user, item) pair)."""
    counts = np.diff(self.offsets)
    return readers.Pairs(self.path, np.repeat(self.users, counts), self.items,
                         np.repeat(self.lines, counts), self.num_lines)


@dataclasses.dataclass(frozen=True)
class Source:
  """A validated LightGCN folder, ready to be written.

  Attributes:
    directory: the folder read.
    fingerprint: :func:`source_fingerprint` of the folder, taken before reading it.
    splits: ``{"train": SplitLines, "test": SplitLines}``.
    metadata: what goes into ``builder.info.metadata`` (JSON-compatible values).
  """

  directory: pathlib.Path
  fingerprint: str
  splits: dict[str, SplitLines]
  metadata: dict[str, Any]


def read_source(directory: os.PathLike | str) -> Source:
  """Reads and validates a LightGCN folder with :func:`cerp_jax.readers.load_lightgcn`.

  Args:
    directory: folder holding ``train.txt``/``test.txt`` and optionally ``user_list.txt``/
      ``item_list.txt``.

  Returns:
    The folder's :class:`Source`.

  Raises:
    readers.DataError: exactly as :func:`cerp_jax.readers.load_lightgcn` (missing or empty file,
      non-integer token, negative id, empty split), or a file changed while being read.
  """
  directory = pathlib.Path(directory)
  fingerprint = source_fingerprint(directory)
  # Same reader, same validation, same messages as the plain text loader.
  train, test, _, _, _ = readers.load_lightgcn(directory)
  nu_list = readers.count_from_list(directory / "user_list.txt")
  ni_list = readers.count_from_list(directory / "item_list.txt")
  max_u = int(max(train.users.max(), test.users.max())) + 1
  max_i = int(max(train.items.max(), test.items.max())) + 1
  splits = {"train": SplitLines.from_pairs(train), "test": SplitLines.from_pairs(test)}
  metadata = {
      "source_dir": str(directory),
      "source_sha256": fingerprint,
      "num_users_from_list": nu_list,  # None when user_list.txt is absent
      "num_items_from_list": ni_list,
      "max_user_id_plus_one": max_u,
      "max_item_id_plus_one": max_i,
      "num_users": nu_list or max_u,
      "num_items": ni_list or max_i,
  }
  for split, lines in splits.items():
    metadata.update({
        f"{split}_path": lines.path,
        f"{split}_num_lines": lines.num_lines,
        f"{split}_num_examples": len(lines),  # non-blank lines = user lines
        f"{split}_num_pairs": int(len(lines.items)),
    })
  return Source(directory, fingerprint, splits, metadata)


# ----------------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------------


class LightgcnInteractions(tfds.core.GeneratorBasedBuilder):
  """LightGCN-format interactions, one example per user line, stored as array_record.

  Construct with ``config=`` one of the names in ``BUILDER_CONFIGS`` (or a :class:`LightGCNConfig`
  from :func:`config_for`) and prepare with ``download_and_prepare(download_config=
  tfds.download.DownloadConfig(manual_dir=<folder with train.txt/test.txt>))``.

  Raises (from ``download_and_prepare``):
    readers.DataError: malformed files, exactly as :func:`cerp_jax.readers.load_lightgcn`; no
      ``train.txt`` in the manual dir and no public copy.
    DownloadError: no ``train.txt`` in the manual dir and the public copy could not be fetched.
  """

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: one example per interaction (user, item, line).",
      "2.0.0": "One example per user line (user, items, line); written by the standard "
               "GeneratorBasedBuilder path.",
  }
  BUILDER_CONFIGS = [GOWALLA, AMAZON_BOOK_KGAT, ML1M_M1]
  DEFAULT_CONFIG_NAME = "gowalla"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Pass the dataset folder itself (the one holding train.txt and test.txt, and optionally
  user_list.txt / item_list.txt) as the manual dir, e.g.
  tfds.download.DownloadConfig(manual_dir="../shared/data/gowalla"), or call
  cerp_jax.tfds_builder.load_pairs(directory, name). Gowalla can also be downloaded from the public
  LightGCN-PyTorch repository when online.
  """

  def __init__(self, *, file_format: Any = "array_record", source: Optional[Source] = None,
               **kwargs: Any):
    """Builder with ``array_record`` as the default file format (random access, no TensorFlow).

    Args:
      file_format: TFDS file format; keep ``"array_record"`` for :meth:`as_data_source`.
      source: optional, an already validated :func:`read_source` result for the manual dir; when it
        matches the manual dir (path and fingerprint) it is written as is instead of read again,
        so what was validated before an old copy got replaced is exactly what gets written.
      **kwargs: forwarded to ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ``config``, …).
    """
    super().__init__(file_format=file_format, **kwargs)
    self._validated_source = source
    self._requested_manual_dir: Optional[str] = None

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly, not dataset_info_from_configs(): that one would adopt any README.md /
    # CITATIONS.bib lying in this package's folder as the dataset's description / citation.
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Implicit-feedback interactions in LightGCN text format: one example per "
                     "non-blank line (a user and that user's items), in file order."),
        features=tfds.features.FeaturesDict({
            "user": tfds.features.Scalar(dtype=np.int64, doc="0-based user id of the line"),
            "items": tfds.features.Tensor(
                shape=(None,), dtype=np.int64,
                doc="0-based item ids of the line, in file order (may be empty)"),
            "line": tfds.features.Scalar(dtype=np.int64, doc="1-based line in the source file"),
        }),
        homepage="https://github.com/gusye1234/LightGCN-PyTorch",
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # keep file order (examples are keyed by line number)
    )

  def download_and_prepare(self, *, download_config: Optional[
      tfds.download.DownloadConfig] = None, **kwargs: Any) -> None:
    """``GeneratorBasedBuilder.download_and_prepare`` (``download_config.manual_dir``: the LightGCN
    folder), remembering the manual dir for messages. Raises as the class docstring says."""
    self._requested_manual_dir = (
        os.fspath(download_config.manual_dir)
        if download_config is not None and download_config.manual_dir else None)
    super().download_and_prepare(download_config=download_config, **kwargs)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Reads and validates the source, records the counts in ``info.metadata``; one generator a split.

    Raises:
      readers.DataError: as :func:`read_source`.
      DownloadError: the download fallback failed.
    """
    source_dir = self._source_dir(dl_manager)
    source = self._validated_source
    if (source is None or source.directory.resolve() != source_dir.resolve()
        or source.fingerprint != source_fingerprint(source_dir)):
      source = read_source(source_dir)
    self.info.metadata.update(source.metadata)
    return {split: self._generate_examples(source.splits[split]) for split in SPLITS}

  def _generate_examples(self, lines: SplitLines) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields ``(line number, {"user": int, "items": int64 [k], "line": int})`` in file order."""
    offsets = lines.offsets.tolist()
    for k, (user, line) in enumerate(zip(lines.users.tolist(), lines.lines.tolist())):
      yield line, {"user": user, "items": lines.items[offsets[k]:offsets[k + 1]], "line": line}

  def _source_dir(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    """The folder to read: the manual dir when it holds train.txt, else a downloaded copy.

    Raises:
      DownloadError: download needed and failed.
      readers.DataError: no manual files and no public copy for this config.
    """
    configured = self._requested_manual_dir  # for messages (TFDS raises when it is empty)
    try:
      manual: Optional[pathlib.Path] = pathlib.Path(os.fspath(dl_manager.manual_dir))
    except AssertionError:  # TFDS: manual dir not set, missing or empty
      manual = None
    if manual is not None and (manual / "train.txt").exists():
      return manual
    config = self.builder_config
    if not config.url_root:
      if manual is not None:
        return manual  # load_lightgcn names the missing file exactly like the plain loader
      raise readers.DataError(
          f"{self.name}/{config.name}: no train.txt in the manual dir {configured} (missing or "
          f"empty) and no public download for this dataset. {_HOW_TO_PASS_DATA}")
    return self._download(dl_manager, config, manual or configured)

  def _download(self, dl_manager: tfds.download.DownloadManager, config: LightGCNConfig,
                manual: Any) -> pathlib.Path:
    """Fetches the public copy (probe first, so offline fails fast) into the download dir."""
    urls = {f: config.url_root + f for f in SOURCE_FILES}
    where = f"no train.txt in the manual dir {manual}" if manual else "no manual dir"
    probe_url(urls["train.txt"], f"{config.name} ({where})")
    try:
      paths = dl_manager.download(urls)
    except Exception as e:  # pylint: disable=broad-except
      raise DownloadError(
          _download_failed(f"{config.name} ({where})", config.url_root, e)) from e
    out = pathlib.Path(os.fspath(dl_manager.download_dir)) / f"{self.name}_{config.name}_files"
    out.mkdir(parents=True, exist_ok=True)
    for f in SOURCE_FILES:  # TFDS names downloads by URL hash; load_lightgcn wants the plain names
      shutil.copyfile(os.fspath(paths[f]), out / f)
    logging.info("%s: downloaded %s to %s", config.name, config.url_root, out)
    return out


_HOW_TO_PASS_DATA = (
    "Pass the dataset folder (holding train.txt and test.txt) as the manual dir: "
    "cerp_jax.tfds_builder.load_pairs(directory=...), "
    "tfds.download.DownloadConfig(manual_dir=...), config.data.path/root, or set CERP_DATA_DIR to "
    "the data root that holds the dataset folder.")


def _download_failed(name: str, url: str, reason: Any) -> str:
  return f"{name}: downloading {url} failed ({reason}). {_HOW_TO_PASS_DATA}"


def probe_url(url: str, name: str = "", timeout: Optional[float] = None) -> None:
  """Checks within ``timeout`` seconds that ``url`` answers an HTTP HEAD request.

  The request (DNS lookup included) runs in a daemon thread, so the call returns after at most
  ``timeout`` seconds even where the resolver itself would block.

  Args:
    url: the URL to probe; ``name``: dataset name, for the message.
    timeout: seconds; defaults to :data:`PROBE_TIMEOUT_S`.

  Raises:
    DownloadError: no answer in time, connection refused, DNS failure or an HTTP error status; the
      message says how to pass a manual dir / set ``CERP_DATA_DIR`` instead.
  """
  timeout = PROBE_TIMEOUT_S if timeout is None else float(timeout)
  outcome: dict[str, Any] = {}

  def _probe():
    try:
      request = urllib.request.Request(url, method="HEAD")
      with urllib.request.urlopen(request, timeout=timeout) as response:
        outcome["status"] = response.status
    except urllib.error.HTTPError as e:  # the server answered
      outcome["status"] = e.code
    except BaseException as e:  # pylint: disable=broad-except
      outcome["error"] = e

  thread = threading.Thread(target=_probe, name="cerp-download-probe", daemon=True)
  start = time.monotonic()
  thread.start()
  thread.join(timeout)
  if thread.is_alive():
    reason = f"no answer within {timeout:g} s"
  elif "error" in outcome:
    reason = f"{type(outcome['error']).__name__}: {outcome['error']}"
  elif outcome.get("status", 0) >= 400 and outcome["status"] not in (405, 501):  # HEAD refused: up
    reason = f"HTTP status {outcome['status']}"
  else:
    logging.info("probe %s: HTTP %s in %.2f s", url, outcome.get("status"), time.monotonic() - start)
    return
  raise DownloadError(_download_failed(name or url, url, reason))


def source_fingerprint(directory: os.PathLike | str) -> str:
  """Hex SHA-256 over the names and bytes of the files of :data:`SOURCE_FILES` present in the
  LightGCN folder ``directory`` (absent ones are skipped)."""
  directory = pathlib.Path(directory)
  digest = hashlib.sha256()
  for f in SOURCE_FILES:
    path = directory / f
    if path.exists():
      digest.update(f.encode() + b"\0")
      with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
          digest.update(chunk)
  return digest.hexdigest()


def config_for(name: str, directory: os.PathLike | str) -> LightGCNConfig:
  """The :class:`LightGCNConfig` for a dataset name (or, failing that, the folder's name).

  ``name`` is matched case-insensitively with ``-`` read as ``_`` against the known datasets
  (``gowalla``, ``amazon_book_kgat``/``amazon-book-kgat``, ``ml1m_m1``/``movielens-1m-m1``); when it
  matches none, the folder's base name is tried; when that matches none either, a generic config
  named ``folder_<basename>_<hash of the absolute path>`` is returned (no download).
  """
  directory = pathlib.Path(directory)
  known = {c.name: c for c in LightgcnInteractions.BUILDER_CONFIGS}
  for candidate in (name, directory.name):
    key = _ALIASES.get((candidate or "").strip().lower().replace("-", "_"))
    if key:
      return known[key]
  absolute = str(directory.expanduser().resolve())
  slug = re.sub(r"[^a-z0-9]+", "_", directory.name.lower()).strip("_") or "data"
  digest = hashlib.sha1(absolute.encode()).hexdigest()[:10]
  return LightGCNConfig(name=f"folder_{slug}_{digest}", folder=absolute,
                        description=f"LightGCN-format folder {absolute}")


def prepare(directory: os.PathLike | str, name: str = "",
            tfds_data_dir: Optional[os.PathLike | str] = None) -> LightgcnInteractions:
  """Prepares (if needed) the TFDS dataset for a LightGCN folder and returns a builder to read it.

  A prepared dataset is reused when its recorded source fingerprint matches the files now in
  ``directory``, else regenerated (a changed folder, or another folder under the same config name,
  never serves stale data). The new files are validated *before* the old copy is replaced: when
  they are malformed the DataError comes out and the old copy stays as it was (TFDS writes into a
  temporary folder and renames it when complete). When ``directory`` holds no ``train.txt`` the
  prepared data is reused as is (downloaded datasets), else downloaded if the config has a public
  copy.

  Args:
    directory: the LightGCN folder (the manual dir); ``name``: see :func:`config_for`.
    tfds_data_dir: TFDS data dir; default ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``.

  Raises:
    readers.DataError: as :func:`cerp_jax.readers.load_lightgcn` (including ``train.txt: file
      not found`` when the folder lacks it and there is no public copy).
    DownloadError: the download fallback failed.
  """
  directory = pathlib.Path(directory)
  config = config_for(name, directory)
  has_files = (directory / "train.txt").exists()
  if not has_files and not config.url_root:
    readers.read_lightgcn_file(directory / "train.txt")  # raises the plain loader's "file not found"
  data_dir = os.fspath(tfds_data_dir) if tfds_data_dir else (os.environ.get("TFDS_DATA_DIR") or None)
  builder = LightgcnInteractions(config=config, data_dir=data_dir)
  prepared = builder.is_prepared()
  if prepared and not has_files:
    return builder
  manual_dir = directory.expanduser().absolute()
  source = None
  if has_files:
    if prepared and builder.info.metadata.get("source_sha256") == source_fingerprint(directory):
      return builder
    source = read_source(manual_dir)  # raises here, before TFDS deletes any old copy
    if prepared:
      logging.info("%s: prepared data at %s came from other files (%s); regenerating from %s",
                   config.name, builder.data_dir, builder.info.metadata.get("source_dir"), directory)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if prepared  # replaces the old copy
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  start = time.perf_counter()
  LightgcnInteractions(config=config, data_dir=data_dir, source=source).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir),
                                                   download_mode=mode))
  logging.info("%s: prepared in %.1f s at %s", config.name, time.perf_counter() - start,
               builder.data_dir)
  return LightgcnInteractions(config=config, data_dir=data_dir)  # reads the new info from disk


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> SplitLines:
  """Reads one split of a prepared builder, in file order, through ``builder.as_data_source()``.

  All records are fetched in one batch (``__getitems__``) and decoded by TFDS's own feature
  decoding (``features.deserialize_example_np``); no TensorFlow is involved.

  Args:
    builder: a prepared :class:`LightgcnInteractions` (array_record format).
    split: a TFDS split spec, e.g. ``"train"``, ``"test"``, ``"train[:10%]"``.

  Returns:
    The split's :class:`SplitLines`: ``users``/``lines`` int64 ``[m]`` (one per example),
    ``offsets`` int64 ``[m + 1]``, ``items`` int64 ``[n]``; ``path``/``num_lines`` are those of the
    source file recorded in the metadata (for the base split name).
  """
  source = builder.as_data_source(split=split)
  examples = source.__getitems__(list(range(len(source))))
  m = len(examples)
  users = np.fromiter((e["user"] for e in examples), np.int64, m)
  lines = np.fromiter((e["line"] for e in examples), np.int64, m)
  items = [e["items"] for e in examples]
  offsets = np.zeros(m + 1, np.int64)
  np.cumsum(np.fromiter(map(len, items), np.int64, m), out=offsets[1:])
  items = np.concatenate(items).astype(np.int64, copy=False) if m else np.zeros(0, np.int64)
  meta = builder.info.metadata
  base = re.split(r"[\[+]", split, maxsplit=1)[0]
  return SplitLines(str(meta.get(f"{base}_path", "")), int(meta.get(f"{base}_num_lines", 0)),
                    users, lines, offsets, items)


def load_pairs(directory: os.PathLike | str, name: str = "",
               tfds_data_dir: Optional[os.PathLike | str] = None, num_users: int = 0,
               num_items: int = 0) -> tuple[readers.Pairs, readers.Pairs, int, int, dict[str, str]]:
  """:func:`~cerp_jax.readers.load_lightgcn`, read through TFDS (array_record, prepared on first use).

  Args:
    directory: the LightGCN folder (``train.txt``/``test.txt``, optional ``user_list.txt``/
      ``item_list.txt``); used as the TFDS manual dir. For Gowalla it may lack the files: the public
      copy is downloaded then (fails fast offline).
    name: dataset name selecting the builder config (see :func:`config_for`).
    tfds_data_dir: TFDS data dir (default ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``).
    num_users: config's user count, used only when ``user_list.txt`` is absent (0 = automatic).
    num_items: config's item count, likewise.

  Returns:
    ``(train_pairs, test_pairs, num_users, num_items, source)``, equal to what
    :func:`cerp_jax.readers.load_lightgcn` returns for the same folder:
    :class:`cerp_jax.readers.Pairs` with int64 ``[n]`` ``users``/``items``/``lines`` in file order
    (each line's items repeat its user and line number), the source ``path`` and ``num_lines``; the
    counts settled the same way (:func:`cerp_jax.readers.settle_count`: list file, else config, else
    max id + 1) and ``source`` = ``{"user": where the user count came from, "item": …}`` with the
    same wording.

  Raises:
    readers.DataError: malformed or missing files, the same message as the plain loader.
    DownloadError: Gowalla without local files, and the download failed.
  """
  directory = pathlib.Path(directory)
  builder = prepare(directory, name, tfds_data_dir)
  meta = builder.info.metadata
  local = (directory / "train.txt").exists()
  pairs = []
  for split in SPLITS:
    lines = read_split(builder, split)
    if local:
      lines = dataclasses.replace(lines, path=str(directory / f"{split}.txt"))
    pairs.append(lines.to_pairs())
  list_dir = directory if local else pathlib.Path(meta["source_dir"])
  settle = readers.settle_count
  nu, su = settle(meta["num_users_from_list"], num_users, int(meta["max_user_id_plus_one"]),
                  list_dir / "user_list.txt")
  ni, si = settle(meta["num_items_from_list"], num_items, int(meta["max_item_id_plus_one"]),
                  list_dir / "item_list.txt")
  return pairs[0], pairs[1], nu, ni, {"user": su, "item": si}
