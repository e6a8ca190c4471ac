"""cerp_jax: CERP embedding compression for recommenders, in JAX/Flax.

The public API, for plugging CERP into your own Flax model and training loop (docs/library.md, "Install / use
as a library"; ``examples/custom_loop.py``):

* embeddings (one interface: ``__call__(ids)``, ``embed_all()``, ``tables()``,
  ``num_parameters()``): :class:`CERPEmbedding`, :class:`FullEmbedding`, :class:`QREmbedding`,
  :class:`HashEmbedding`, :class:`PEPEmbedding`; :func:`smallest_valid_bucket_size`,
  :func:`count_nonzeros`, :class:`BucketSizeError`;
* loss terms: :func:`bpr_loss`, :func:`pruning_regularizer`;
* pruning schedule and snapshots: :func:`budgets`, :class:`PruneState`, :func:`init_prune_state`,
  :func:`capture` (jittable), :func:`masks_from_snapshot`, :func:`rewind`;
* evaluation: :class:`Interactions` (the data it ranks against), :class:`Evaluator` (full ranking,
  Recall/NDCG/Precision/HitRate@K);
* packed tables: :func:`pack`, :func:`unpack`;
* serving top-K from a packed file: :class:`Recommender` (the module ``recommend`` also has the
  one-call :func:`cerp_jax.recommend.recommend`).

Names resolve lazily (PEP 562): ``import cerp_jax`` is cheap, and a submodule import such as
``from cerp_jax import packing`` loads only what that module needs.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name → the submodule that defines it.
_EXPORTS = {
    "CERPEmbedding": "embeddings",
    "FullEmbedding": "embeddings",
    "BucketSizeError": "embeddings",
    "smallest_valid_bucket_size": "embeddings",
    "count_nonzeros": "embeddings",
    "QREmbedding": "baselines",
    "HashEmbedding": "baselines",
    "PEPEmbedding": "baselines",
    "bpr_loss": "losses",
    "pruning_regularizer": "losses",
    "budgets": "pruning",
    "PruneState": "pruning",
    "init_prune_state": "pruning",
    "capture": "pruning",
    "masks_from_snapshot": "pruning",
    "rewind": "pruning",
    "Interactions": "data",
    "Evaluator": "evaluation",
    "pack": "packing",
    "unpack": "packing",
    "Recommender": "recommend",
}

# Submodules exported as such. RECOMMEND: cerp_jax/recommend.py (top-K recommendations from a packed
# file; its class Recommender is in _EXPORTS). It is exported as the module, not as a function of the
# same name, so that the house style `from cerp_jax import recommend as recommend_lib` keeps meaning
# the module; it joins __all__ as soon as the file exists.
_SUBMODULES = ("recommend",)

__all__ = sorted(_EXPORTS) + [m for m in _SUBMODULES
                              if importlib.util.find_spec(f"{__name__}.{m}") is not None]


def __getattr__(name: str):
  """Imports an exported name's submodule on first use (PEP 562).

  Raises:
    AttributeError: ``name`` is not exported (or is an exported submodule not in this version).
  """
  if name in _EXPORTS:
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  elif name in _SUBMODULES:
    if importlib.util.find_spec(f"{__name__}.{name}") is None:
      raise AttributeError(f"module {__name__!r} has no attribute {name!r}: {__name__}/{name}.py "
                           "is not in this version")
    value = importlib.import_module(f"{__name__}.{name}")
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value  # later lookups skip __getattr__
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
  from cerp_jax.baselines import HashEmbedding, PEPEmbedding, QREmbedding
  from cerp_jax.data import Interactions
  from cerp_jax.embeddings import (BucketSizeError, CERPEmbedding, FullEmbedding, count_nonzeros,
                                   smallest_valid_bucket_size)
  from cerp_jax.evaluation import Evaluator
  from cerp_jax.losses import bpr_loss, pruning_regularizer
  from cerp_jax.packing import pack, unpack
  from cerp_jax.pruning import (PruneState, budgets, capture, init_prune_state,
                                masks_from_snapshot, rewind)
  from cerp_jax.recommend import Recommender
