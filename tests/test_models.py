"""Backbones and the model's assembly from a config (cerp_jax/models.py)."""

import jax
import jax.numpy as jnp
import pytest

from cerp_jax import baselines as B
from cerp_jax import embeddings as E
from cerp_jax import models


def test_mlp_parameter_count_matches_original():
  mlp = models.NCFMLP()
  z = jnp.zeros((2, 128))
  v = mlp.init(jax.random.key(0), z, z)
  n = sum(x.size for x in jax.tree_util.tree_leaves(v["params"]))
  assert n == 2_765_313  # the original's NCF-MLP at d = 128 (Linear + BatchNorm affine)


def test_make_embedding_registry(test_config):
  for name, cls in (("qr", B.QREmbedding), ("hash", B.HashEmbedding), ("pep", B.PEPEmbedding),
                    ("full", E.FullEmbedding), ("cerp", E.CERPEmbedding)):
    test_config.model.embedding = name
    m = models.make_embedding(test_config, 140, E.PRUNE)
    assert isinstance(m, cls)
    assert bool(m.prunable) == E.prunes(name)
  test_config.model.embedding = "dhe"
  with pytest.raises(ValueError, match="'dhe'"):
    models.make_embedding(test_config, 140, E.PRUNE)
