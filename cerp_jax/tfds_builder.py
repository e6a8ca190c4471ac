"""TFDS dataset builder for LightGCN-format interaction data (array_record; no TensorFlow needed).

The builder :class:`LightgcnInteractions` (registered in TFDS as ``lightgcn_interactions``) turns a
LightGCN folder (``train.txt``/``test.txt``, optional ``user_list.txt``/``item_list.txt``) into a TFDS
dataset with one example per (user, item) interaction, in file order:

  * features: ``user`` (int64), ``item`` (int64), ``line`` (int64, the 1-based source line, so errors
    found downstream can still name the line);
  * splits: ``train`` and ``test``;
  * file format: ``array_record`` (random access through ``tfds.data_source`` /
    ``builder.as_data_source()``, which work without TensorFlow);
  * metadata (``builder.info.metadata``, a ``tfds.core.MetadataDict`` saved as ``metadata.json``):
    ``num_users``/``num_items`` (from ``user_list.txt``/``item_list.txt`` when present, else max id + 1,
    as :func:`cerp_jax.data.load_lightgcn` settles them without config overrides), the list counts and
    max ids separately (so config overrides can be settled the same way on load), the source paths,
    line counts and a SHA-256 fingerprint of the source files.

Builder configs: ``gowalla``, ``amazon_book_kgat``, ``ml1m_m1`` (plus a generic config built on the fly
for any other folder, see :func:`config_for`). Files come from the manual dir
(``tfds.download.DownloadConfig(manual_dir=<the dataset folder>)``). Parsing and validation reuse
:func:`cerp_jax.data.load_lightgcn` / :func:`cerp_jax.data.read_lightgcn_file`, so a malformed file raises
the very same :class:`cerp_jax.data.DataError` (file, line, token) as the plain text loader.

Gowalla only: when the manual dir holds no ``train.txt``, the four files are downloaded from the public
LightGCN-PyTorch repository (:data:`GOWALLA_URL_ROOT`). The connection is probed first with a short
timeout (:data:`PROBE_TIMEOUT_S`, DNS included, run in a daemon thread so nothing can block longer),
so that offline the build fails within seconds with :class:`DownloadError` instead of entering the
retry loop of TFDS's download manager.

Typical use::

  from cerp_jax import tfds_builder
  train, test, nu, ni, source = tfds_builder.load_pairs("/work/shared/data/gowalla", "gowalla")

or, through TFDS directly::

  import tensorflow_datasets as tfds
  ds = tfds.data_source(
      "lightgcn_interactions/gowalla", split="train", data_dir="/tmp/tfds",
      download_and_prepare_kwargs=dict(download_config=tfds.download.DownloadConfig(
          manual_dir="/work/shared/data/gowalla")))
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

from cerp_jax import data

# Public LightGCN-PyTorch copy of the Gowalla files (train/test/user_list/item_list.txt).
GOWALLA_URL_ROOT = (
    "https://raw.githubusercontent.com/gusye1234/LightGCN-PyTorch/master/data/gowalla/")

# Seconds the connectivity probe may take (DNS + connect + first response) before a download is
# declared failed. Tests shorten it.
PROBE_TIMEOUT_S = 4.0

# Files of a LightGCN folder, in the order they are fingerprinted and downloaded.
SOURCE_FILES = ("train.txt", "test.txt", "user_list.txt", "item_list.txt")

# Records parsed per vectorised batch when reading.
_PARSE_BATCH = 1 << 18

# Upper bound on the serialized bytes of one array_record shard written by the fast path.
_MAX_SHARD_BYTES = 1 << 30

# Feature names, in the order the fast writer serializes them (sorted).
_KEYS = ("item", "line", "user")


class DownloadError(data.DataError):
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


class LightgcnInteractions(tfds.core.GeneratorBasedBuilder):
  """LightGCN-format (user, item) interactions, one example per pair, stored as array_record.

  Construct with ``config=`` one of the names in ``BUILDER_CONFIGS`` (or a :class:`LightGCNConfig`
  from :func:`config_for`) and prepare with ``download_and_prepare(download_config=
  tfds.download.DownloadConfig(manual_dir=<folder with train.txt/test.txt>))``.

  Raises (from ``download_and_prepare``):
    cerp_jax.data.DataError: malformed files, exactly as :func:`cerp_jax.data.load_lightgcn`; no
      ``train.txt`` in the manual dir and no public copy.
    DownloadError: no ``train.txt`` in the manual dir and the public copy could not be fetched.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release: user, item, line features; train/test splits."}
  BUILDER_CONFIGS = [GOWALLA, AMAZON_BOOK_KGAT, ML1M_M1]
  DEFAULT_CONFIG_NAME = "gowalla"
  # Write array_record shards with the vectorised serializer (see _generate_splits).
  FAST_WRITE = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Pass the dataset folder itself (the one holding train.txt and test.txt, and optionally
  user_list.txt / item_list.txt) as the manual dir, e.g.
  tfds.download.DownloadConfig(manual_dir="/work/shared/data/gowalla"), or call
  cerp_jax.tfds_builder.load_pairs(directory, name). Gowalla can also be downloaded from the public
  LightGCN-PyTorch repository when online.
  """

  def __init__(self, *, file_format: Any = "array_record", **kwargs: Any):
    """Builder with ``array_record`` as the default file format (random access, no TensorFlow).

    Args:
      file_format: TFDS file format; keep ``"array_record"`` for :meth:`as_data_source`.
      **kwargs: forwarded to ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ``config``, …).
    """
    super().__init__(file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    scalar = lambda doc: tfds.features.Scalar(dtype=np.int64, doc=doc)
    # DatasetInfo directly, not dataset_info_from_configs(): that one would adopt any README.md /
    # CITATIONS.bib lying in this package's folder as the dataset's description / citation.
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Implicit-feedback (user, item) interactions in LightGCN text format, one "
                     "example per interaction, in file order."),
        features=tfds.features.FeaturesDict({
            "user": scalar("0-based user id"),
            "item": scalar("0-based item id"),
            "line": scalar("1-based line of the source file holding the pair"),
        }),
        homepage="https://github.com/gusye1234/LightGCN-PyTorch",
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # keep file order
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Standard TFDS path (``FAST_WRITE = False``): one generator per split."""
    split_pairs = self._read_sources(dl_manager)
    return {split: self._generate_examples(pairs) for split, pairs in split_pairs.items()}

  def _generate_examples(self, pairs: data.Pairs) -> Iterator[tuple[int, dict[str, int]]]:
    users, items, lines = pairs.users.tolist(), pairs.items.tolist(), pairs.lines.tolist()
    for k, (u, i, l) in enumerate(zip(users, items, lines)):
      yield k, {"user": u, "item": i, "line": l}

  def _generate_splits(self, dl_manager: tfds.download.DownloadManager,
                       download_config: tfds.download.DownloadConfig):
    """Writes the splits; with ``FAST_WRITE`` serializes them vectorised instead of per example.

    TFDS's generic path encodes, serializes and shuffle-buckets every example in Python (about
    30 us each: ~30 s for ML-1M's 0.9M interactions on one core). The fast path serializes the
    same examples vectorised (:func:`serialize_pairs`; the tests check that TFDS decodes both
    paths' records identically), writes them in file order to the array_record shards through
    TFDS's own ``ExampleWriter`` and returns the same ``SplitInfo`` objects. It applies to
    array_record output without ``max_examples_per_split``; anything else takes TFDS's generic path.
    """
    file_format = self.info.file_format
    if (not self.FAST_WRITE or download_config.max_examples_per_split is not None
        or file_format != tfds.core.FileFormat.ARRAY_RECORD):
      return super()._generate_splits(dl_manager, download_config)
    split_infos = []
    for split, pairs in self._read_sources(dl_manager).items():
      template = self._get_filename_template(split_name=split)
      records, num_bytes = serialize_pairs(pairs)
      num_shards = max(1, -(-num_bytes // _MAX_SHARD_BYTES))
      bounds = np.linspace(0, len(records), num_shards + 1).astype(np.int64)
      writer = self._example_writer()
      for shard in range(num_shards):
        lo, hi = int(bounds[shard]), int(bounds[shard + 1])
        path = template.sharded_filepath(shard_index=shard, num_shards=num_shards)
        writer.write(path, zip(range(lo, hi), records[lo:hi]))
      split_infos.append(tfds.core.SplitInfo(
          name=split, shard_lengths=np.diff(bounds).tolist(), num_bytes=num_bytes,
          filename_template=template))
    return split_infos

  def _read_sources(self, dl_manager: tfds.download.DownloadManager) -> dict[str, data.Pairs]:
    """Reads and validates the source files and records the counts in ``info.metadata``.

    Returns:
      ``{"train": Pairs, "test": Pairs}`` as read by :func:`cerp_jax.data.load_lightgcn`.

    Raises:
      cerp_jax.data.DataError: as :func:`cerp_jax.data.load_lightgcn`.
      DownloadError: the download fallback failed.
    """
    source_dir = self._source_dir(dl_manager)
    # Same reader, same validation, same messages as the plain text loader.
    train, test, _, _, _ = data.load_lightgcn(source_dir)
    nu_list = data._count_from_list(source_dir / "user_list.txt")  # pylint: disable=protected-access
    ni_list = data._count_from_list(source_dir / "item_list.txt")  # pylint: disable=protected-access
    max_u = int(max(train.users.max(), test.users.max())) + 1
    max_i = int(max(train.items.max(), test.items.max())) + 1
    self.info.metadata.update({
        "source_dir": str(source_dir),
        "source_sha256": source_fingerprint(source_dir),
        "train_path": train.path,
        "test_path": test.path,
        "train_num_lines": int(train.num_lines),
        "test_num_lines": int(test.num_lines),
        "num_users_from_list": nu_list,  # None when user_list.txt is absent
        "num_items_from_list": ni_list,
        "max_user_id_plus_one": max_u,
        "max_item_id_plus_one": max_i,
        "num_users": nu_list or max_u,
        "num_items": ni_list or max_i,
    })
    return {"train": train, "test": test}

  def _source_dir(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    """The folder to read: the manual dir when it holds train.txt, else a downloaded copy.

    Raises:
      DownloadError: download needed and failed.
      cerp_jax.data.DataError: no manual files and no public copy for this config.
    """
    # The configured folder, for messages only (TFDS's public property raises when it is empty).
    configured = getattr(dl_manager, "_manual_dir", None)
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
      raise data.DataError(
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
    url: the URL to probe.
    name: dataset name, for the message.
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
  """SHA-256 over the names and bytes of the LightGCN files present in ``directory``.

  Args:
    directory: a LightGCN folder.

  Returns:
    Hex digest (str); files in :data:`SOURCE_FILES` that are absent are skipped.
  """
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
  """Picks the builder config for a dataset name (or, failing that, the folder's name).

  ``name`` is matched case-insensitively with ``-`` read as ``_`` against the known datasets
  (``gowalla``, ``amazon_book_kgat``/``amazon-book-kgat``, ``ml1m_m1``/``movielens-1m-m1``); when it
  matches none, the folder's base name is tried; when that matches none either, a generic config
  named ``folder_<basename>_<hash of the absolute path>`` is returned (no download).

  Args:
    name: dataset name (e.g. ``config.data.name``); may be empty.
    directory: the dataset folder.

  Returns:
    A :class:`LightGCNConfig` (one of ``LightgcnInteractions.BUILDER_CONFIGS`` when known).
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

  An already prepared dataset is reused when its recorded source fingerprint matches the files now
  in ``directory`` and regenerated otherwise (so a changed folder, or another folder under the same
  config name, never serves stale data). When ``directory`` holds no ``train.txt`` the prepared data
  is reused as is (downloaded datasets), else downloaded if the config has a public copy.

  Args:
    directory: the LightGCN folder (the manual dir).
    name: dataset name, see :func:`config_for`.
    tfds_data_dir: TFDS data dir; default ``$TFDS_DATA_DIR``, else TFDS's default
      (``~/tensorflow_datasets``).

  Returns:
    A prepared :class:`LightgcnInteractions` builder.

  Raises:
    cerp_jax.data.DataError: as :func:`cerp_jax.data.load_lightgcn` (including ``train.txt: file not
      found`` when the folder lacks it and there is no public copy).
    DownloadError: the download fallback failed.
  """
  directory = pathlib.Path(directory)
  config = config_for(name, directory)
  has_files = (directory / "train.txt").exists()
  if not has_files and not config.url_root:
    data.read_lightgcn_file(directory / "train.txt")  # raises the plain loader's "file not found"
  data_dir = os.fspath(tfds_data_dir) if tfds_data_dir else (os.environ.get("TFDS_DATA_DIR") or None)
  builder = LightgcnInteractions(config=config, data_dir=data_dir)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if has_files and builder.is_prepared():
    stored = builder.info.metadata.get("source_sha256")
    if stored != source_fingerprint(directory):
      logging.info("%s: prepared data at %s came from other files (%s); regenerating from %s",
                   config.name, builder.data_dir, builder.info.metadata.get("source_dir"), directory)
      mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  if mode != tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS or not builder.is_prepared():
    start = time.perf_counter()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.fspath(directory.expanduser().absolute()), download_mode=mode))
    logging.info("%s: prepared in %.1f s at %s", config.name, time.perf_counter() - start,
                 builder.data_dir)
    builder = LightgcnInteractions(config=config, data_dir=data_dir)  # re-read info from disk
  return builder


def serialize_pairs(pairs: data.Pairs) -> tuple[list[bytes], int]:
  """Serializes pairs as TFDS ``tf.train.Example`` records, vectorised.

  Each record is ``Example{features{feature: item, line, user}}`` with one packed int64 per feature,
  keys in sorted order: the encoding TFDS's ``ExampleSerializer`` produces for this feature spec, up
  to the order of the map entries (which protobuf leaves unspecified). TFDS decodes both the same
  (checked in the tests).

  Args:
    pairs: ``users``/``items``/``lines`` int64 ``[n]``, all >= 0.

  Returns:
    ``(records, num_bytes)``: ``n`` serialized records (``bytes``) in order, and their total size.
  """
  columns = {"item": pairs.items, "line": pairs.lines, "user": pairs.users}
  n = len(pairs.users)
  encoded = {k: _varints(np.asarray(columns[k], np.int64)) for k in _KEYS}
  rec_len = 2 + sum(14 + nv for _, nv in encoded.values())
  ends = np.cumsum(rec_len)
  starts = ends - rec_len
  buf = np.zeros(int(ends[-1]) if n else 0, np.uint8)
  buf[starts] = 0x0A  # Example.features
  buf[starts + 1] = rec_len - 2
  p = starts + 2
  for key in _KEYS:
    vbytes, nv = encoded[key]
    header = np.empty((n, 14), np.uint8)
    # map entry: tag, len; key: tag, len, 4 bytes; value Feature: tag, len; int64_list: tag, len;
    # packed value: tag, len; then the varint.
    header[:] = [0x0A, 0, 0x0A, len(key), *key.encode(), 0x12, 0, 0x1A, 0, 0x0A, 0]
    header[:, 1] = 12 + nv
    header[:, 9] = 4 + nv
    header[:, 11] = 2 + nv
    header[:, 13] = nv
    buf[p[:, None] + np.arange(14)] = header
    mask = np.arange(10) < nv[:, None]
    buf[((p + 14)[:, None] + np.arange(10))[mask]] = vbytes[mask]
    p = p + 14 + nv
  blob = buf.tobytes()
  records = [blob[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
  return records, len(blob)


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Protobuf varint encoding of non-negative int64 ``[n]``: ``(bytes [n, 10] uint8, length [n])``."""
  u = values.astype(np.uint64)
  nv = np.ones(len(u), np.int64)
  for j in range(1, 10):
    nv += u >= np.uint64(1 << (7 * j))
  out = np.empty((len(u), 10), np.uint8)
  for j in range(10):
    byte = (u >> np.uint64(7 * j)) & np.uint64(0x7F)
    out[:, j] = byte.astype(np.uint8) | ((j < nv - 1).astype(np.uint8) << 7)
  return out, nv


def _parse_records(records: list[bytes]) -> Optional[dict[str, np.ndarray]]:
  """Vectorised parse of serialized ``Example`` records holding the three int64 features.

  Handles the layout :func:`serialize_pairs` writes and the one TFDS's own serializer writes: one
  packed int64 per feature, the three map entries in any order (protobuf does not fix map order).

  Returns:
    ``{"item", "line", "user": int64 [n]}``, or None when any record deviates from that layout (the
    caller then falls back to the protobuf parser).
  """
  n = len(records)
  lengths = np.fromiter(map(len, records), np.int64, n)
  buf = np.frombuffer(b"".join(records) + bytes(96), np.uint8)
  last = len(buf) - 1
  starts = np.cumsum(lengths) - lengths
  ok = (buf[starts] == 0x0A) & (buf[np.minimum(starts + 1, last)] == lengths - 2)
  key_codes = np.array([list(k.encode()) for k in _KEYS], np.int16)  # [3, 4]
  out = {k: np.zeros(n, np.int64) for k in _KEYS}
  seen = np.zeros(n, np.int64)
  shifts = (7 * np.arange(10)).astype(np.uint64)
  p = starts + 2
  for _ in _KEYS:  # one map entry per feature, in whatever order they were written
    h = buf[np.minimum(p[:, None] + np.arange(14), last)].astype(np.int16)
    nv = h[:, 13]
    for j, e in ((0, 0x0A), (2, 0x0A), (3, 4), (8, 0x12), (10, 0x1A), (12, 0x0A)):
      ok &= h[:, j] == e
    ok &= (h[:, 1] == 12 + nv) & (h[:, 9] == 4 + nv) & (h[:, 11] == 2 + nv)
    ok &= (nv >= 1) & (nv <= 10)
    nv = np.clip(nv, 1, 10).astype(np.int64)
    match = np.all(h[:, None, 4:8] == key_codes[None], axis=2)  # [n, 3]
    ok &= match.sum(axis=1) == 1
    kid = np.argmax(match, axis=1)
    ok &= (seen & (1 << kid)) == 0
    seen |= 1 << kid
    vb = buf[np.minimum((p + 14)[:, None] + np.arange(10), last)].astype(np.uint64)
    mask = np.arange(10) < nv[:, None]
    more = (vb & np.uint64(0x80)) != 0
    ok &= ~np.any(mask & (more != (np.arange(10) < (nv - 1)[:, None])), axis=1)
    payload = np.where(mask, (vb & np.uint64(0x7F)) << shifts, np.uint64(0))
    value = payload.sum(axis=1, dtype=np.uint64).astype(np.int64)
    for k_index, key in enumerate(_KEYS):
      rows = kid == k_index
      out[key][rows] = value[rows]
    p = p + 14 + nv
  ok &= (p == starts + lengths) & (seen == (1 << len(_KEYS)) - 1)
  if not ok.all() or (n and min(int(v.min()) for v in out.values()) < 0):
    return None
  return out


def _parse_records_proto(records: list[bytes]) -> dict[str, np.ndarray]:
  """Generic (slow) parse with TFDS's ``tf.train.Example`` proto, one record at a time."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top

  columns = {k: [] for k in _KEYS}
  for record in records:
    feature = tf_example_pb2.Example.FromString(record).features.feature
    for k in _KEYS:
      columns[k].append(feature[k].int64_list.value[0])
  return {k: np.asarray(v, np.int64) for k, v in columns.items()}


def read_split(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
  """Reads one split of a prepared builder into numpy columns, in file order.

  The split's array_record shards (``builder.info.splits[split].file_instructions``) are read in
  bulk with ``ArrayRecordReader.read(start, stop)`` and parsed vectorised (:func:`_parse_records`),
  falling back to the ``tf.train.Example`` proto parser for records in another layout. No
  TensorFlow is involved. (``builder.as_data_source()`` gives the same examples one dict at a time.)

  Args:
    builder: a prepared :class:`LightgcnInteractions` (array_record format).
    split: a TFDS split spec, e.g. ``"train"``, ``"test"``, ``"train[:10%]"``.

  Returns:
    ``{"user": int64 [n], "item": int64 [n], "line": int64 [n]}``.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  records: list[bytes] = []
  for instruction in builder.info.splits[split].file_instructions:
    reader = array_record_module.ArrayRecordReader(os.fspath(instruction.filename))
    try:
      records.extend(reader.read(instruction.skip, instruction.skip + instruction.take))
    finally:
      reader.close()
  parts = []
  for lo in range(0, len(records), _PARSE_BATCH):
    chunk = records[lo:lo + _PARSE_BATCH]
    parsed = _parse_records(chunk)
    parts.append(parsed if parsed is not None else _parse_records_proto(chunk))
  if not parts:
    return {k: np.zeros(0, np.int64) for k in ("user", "item", "line")}
  return {k: np.concatenate([part[k] for part in parts]) for k in ("user", "item", "line")}


def load_pairs(directory: os.PathLike | str, name: str = "",
               tfds_data_dir: Optional[os.PathLike | str] = None, num_users: int = 0,
               num_items: int = 0) -> tuple[data.Pairs, data.Pairs, int, int, dict[str, str]]:
  """:func:`cerp_jax.data.load_lightgcn`, read through TFDS (array_record, prepared on first use).

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
    :func:`cerp_jax.data.load_lightgcn` returns for the same folder: :class:`cerp_jax.data.Pairs` with
    int64 ``[n]`` ``users``/``items``/``lines`` in file order, the source ``path`` and ``num_lines``;
    the counts settled the same way (list file, else config, else max id + 1) and ``source`` =
    ``{"user": where the user count came from, "item": …}`` with the same wording.

  Raises:
    cerp_jax.data.DataError: malformed or missing files, the same message as the plain loader.
    DownloadError: Gowalla without local files, and the download failed.
  """
  directory = pathlib.Path(directory)
  builder = prepare(directory, name, tfds_data_dir)
  meta = builder.info.metadata
  local = (directory / "train.txt").exists()
  pairs = []
  for split in ("train", "test"):
    columns = read_split(builder, split)
    path = str(directory / f"{split}.txt") if local else meta[f"{split}_path"]
    pairs.append(data.Pairs(path, columns["user"], columns["item"], columns["line"],
                            int(meta[f"{split}_num_lines"])))
  list_dir = directory if local else pathlib.Path(meta["source_dir"])
  settle = data._settle  # pylint: disable=protected-access
  nu, su = settle(meta["num_users_from_list"], num_users, int(meta["max_user_id_plus_one"]),
                  list_dir / "user_list.txt")
  ni, si = settle(meta["num_items_from_list"], num_items, int(meta["max_item_id_plus_one"]),
                  list_dir / "item_list.txt")
  return pairs[0], pairs[1], nu, ni, {"user": su, "item": si}
