"""Semantics lock for performance work (issue: performance). A short stage-1 run whose thresholds
start at −2 (so it prunes within the run) must keep the same per-step losses, non-zero counts and
snapshot steps before and after every optimisation. Regenerate only for an intended change of
semantics: ``CERP_REGEN_GOLDEN=1 pytest tests/test_semantics_golden.py``."""

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cerp_jax import data as D
from cerp_jax import embeddings as E
from cerp_jax import models
from cerp_jax import pruning
from cerp_jax import sampler as S
from cerp_jax import train as T

GOLDEN = pathlib.Path(__file__).parent / "golden" / "prune_semantics.json"


@pytest.mark.parametrize("backbone", ["mf", "mlp", "lightgcn"])
def test_stage1_semantics_unchanged(test_config, backbone):
  c = test_config
  c.model.backbone = backbone
  c.model.threshold_init = -2.0
  c.prune.lr = 1e-2
  data = D.load_interactions(c)
  model = T.build_model(c, data, E.PRUNE)
  tx = T.make_optimizer(c.prune)
  sc = T.StepConfig(eta=c.prune.eta, gamma_init=1.0, gamma_decay=0.5, l2_penalty=1e-4, prune=True,
                    unique_users=backbone == "lightgcn")
  fn = T.make_block_fn(model, tx, sc)
  consts = T.model_consts(c, data)
  variables = T.init_variables(model, c.seed, 6)
  params = variables["params"]
  tables = model.apply(variables, method=models.Recommender.tables)
  budgets = pruning.budgets((0.2, 0.25, 0.3), model.embedding.num_parameters())
  state = T.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       batch_stats=variables.get("batch_stats", {}), masks={},
                       opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)),
                       prune=pruning.init_prune_state(budgets, tables, {
                           k: jnp.copy(params["embedding"][k]) for k in ("P", "Q")}))
  sampler = S.BPRSampler(data.train, 5, seed=c.seed)
  losses, nnz = [], []
  for epoch in range(3):
    blocks, _ = S.to_steps(*sampler.epoch(epoch), 10, 32)
    for i in range(blocks["users"].shape[0]):
      state, m = fn(state, {k: v[i] for k, v in blocks.items()}, jnp.int32(epoch), consts)
      act = np.asarray(m["active"])
      losses += np.asarray(m["loss"])[act].tolist()
      nnz += np.asarray(m["nonzeros"])[act].astype(int).tolist()
  got = {"loss": losses, "nonzeros": nnz,
         "snapshot_steps": np.asarray(state.prune.step).tolist()}
  golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
  if os.environ.get("CERP_REGEN_GOLDEN"):
    golden[backbone] = got
    GOLDEN.write_text(json.dumps(golden))
    pytest.skip("golden regenerated")
  want = golden[backbone]
  assert got["snapshot_steps"] == want["snapshot_steps"]
  assert got["nonzeros"] == want["nonzeros"]
  np.testing.assert_allclose(got["loss"], want["loss"], rtol=2e-4, atol=1e-4)
  assert any(s >= 0 for s in got["snapshot_steps"])  # it really pruned within the run
