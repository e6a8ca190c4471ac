"""CERP in your own Flax model and training loop: prune to a budget, snapshot, rewind, retrain.

  python examples/custom_loop.py   # ≈ 20 s on 2 CPU cores; needs only the installed package (pip install .)

Nothing here uses the project's data files, configs or train.py. The script

1. makes its own implicit-feedback data (users in clusters that like their cluster's items);
2. defines its own model: a :class:`cerp_jax.CERPEmbedding` of users and items under a dot product;
3. stage 1: trains it with plain optax (BPR + γ·CERP regularizer, coupled weight decay, Adam) while
   the soft thresholds prune P and Q; ``cerp_jax.capture`` snapshots the tables inside the jitted
   step at the first step whose non-zero count is within each budget;
4. stage 2: for each snapshot, rewinds the step-0 tables under its mask (lottery ticket) and retrains
   them with the mask fixed, so pruned entries stay exactly zero;
5. ranks every item for every test user with :class:`cerp_jax.Evaluator` and packs the tables with
   :func:`cerp_jax.pack`.

It prints the step at which each budget was reached, the most-popular ranking's test Recall@20 (the
floor), then per budget the non-zeros kept, ``masked entries non-zero after retraining: 0``, the
packed bytes and the test Recall@20 / NDCG@20. Exit status 1 if a budget is not reached.
"""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.sparse as sp

import cerp_jax

NUM_USERS, NUM_ITEMS, NUM_CLUSTERS = 300, 400, 8
DIM, BUCKET_SIZE = 16, 32            # CERP tables P, Q: [32, 16] each for N = 700 entities
TARGET_SPARSITIES = (0.3, 0.5)       # of the 2·b·d = 1,024 meta-table entries
GROUPS, NEGATIVES = 256, 4           # (user, positive) groups per step, negatives per group
SEED = 0


def make_data(seed: int = SEED) -> cerp_jax.Interactions:
  """Synthetic interactions: user u likes 20 items of cluster u % 8 plus 3 random ones; 5 of each
  user's items are held out for test. Returns ``[U, I]`` CSR splits in a :class:`Interactions`."""
  rng = np.random.default_rng(seed)
  per_cluster = NUM_ITEMS // NUM_CLUSTERS
  train, test = [], []
  for u in range(NUM_USERS):
    c = u % NUM_CLUSTERS
    liked = rng.choice(np.arange(c * per_cluster, (c + 1) * per_cluster), 20, replace=False)
    items = rng.permutation(np.unique(np.concatenate([liked, rng.choice(NUM_ITEMS, 3)])))
    train += [(u, i) for i in items[5:]]
    test += [(u, i) for i in items[:5]]

  def csr(pairs):
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    ones = np.ones(len(pairs), np.float32)
    return sp.csr_matrix((ones, (pairs[:, 0], pairs[:, 1])), shape=(NUM_USERS, NUM_ITEMS))

  return cerp_jax.Interactions(name="synthetic", num_users=NUM_USERS, num_items=NUM_ITEMS,
                               train=csr(train), valid=csr([]), test=csr(test))


class DotModel(nn.Module):
  """Your model: users and items share one CERP embedding (item i is entity NUM_USERS + i)."""

  mode: str = "prune"  # 'prune' (learnable soft thresholds) | 'retrain' (fixed 0/1 masks)

  def setup(self):
    self.embedding = cerp_jax.CERPEmbedding(
        num_entities=NUM_USERS + NUM_ITEMS, bucket_size=BUCKET_SIZE, features=DIM, mode=self.mode,
        threshold_init=-4.0)  # the paper starts at −100 and waits ~90 k steps; −4 prunes soon

  def __call__(self, users, items):
    """``users [G]``, ``items [G, M]`` int32 → scores ``[G, M]`` and the rows the regularizer uses."""
    u = self.embedding(users)
    it = self.embedding(items + NUM_USERS)
    return jnp.einsum("gd,gmd->gm", u, it), jnp.concatenate([u, it.reshape(-1, DIM)])

  def tables(self):
    """The effective (pruned or masked) tables ``{'P', 'Q'}`` that are counted and packed."""
    return self.embedding.tables()

  def score_users(self, users):
    """``users [B]`` → ``[B, NUM_ITEMS]`` scores of every item (full ranking)."""
    vecs = self.embedding.embed_all()
    return vecs[users] @ vecs[NUM_USERS:].T


def sample_batch(rng: np.random.Generator, data: cerp_jax.Interactions):
  """GROUPS random training positives, each with NEGATIVES uniform random items (column 0 = the
  positive): ``users [G]``, ``items [G, 1 + K]`` int32."""
  coo = data.train.tocoo()
  pick = rng.integers(0, coo.nnz, GROUPS)
  negatives = rng.integers(0, NUM_ITEMS, (GROUPS, NEGATIVES))
  items = np.concatenate([coo.col[pick, None], negatives], axis=1)
  return jnp.asarray(coo.row[pick], jnp.int32), jnp.asarray(items, jnp.int32)


def make_prune_step(model: DotModel, tx: optax.GradientTransformation, gamma: float):
  """Stage 1's jitted step: BPR + γ·(−Σ tanh²(100·e)), an optax update, and ``cerp_jax.capture`` of
  the pre-update tables for the next unmet budget."""
  every_group = jnp.ones(GROUPS, bool)

  def loss_fn(params, users, items):
    scores, rows = model.apply({"params": params}, users, items)
    reg = cerp_jax.pruning_regularizer(rows, jnp.ones(rows.shape[0], bool), eta=100.0)
    return cerp_jax.bpr_loss(scores, every_group) + gamma * reg

  @jax.jit
  def step(params, opt_state, prune_state, step_no, users, items):
    tables = model.apply({"params": params}, method=DotModel.tables)
    nonzeros = cerp_jax.count_nonzeros(tables)
    prune_state = cerp_jax.capture(prune_state, tables, nonzeros, step_no)
    grads = jax.grad(loss_fn)(params, users, items)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, prune_state, nonzeros

  return step


def make_retrain_step(model: DotModel, tx: optax.GradientTransformation):
  """Stage 2's jitted step: BPR on the masked tables (masks are an input, not trained)."""
  every_group = jnp.ones(GROUPS, bool)

  @jax.jit
  def step(params, masks, opt_state, users, items):
    def loss_fn(p):
      scores, _ = model.apply({"params": p, "masks": masks}, users, items)
      return cerp_jax.bpr_loss(scores, every_group)

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def prune(data, rng, max_steps: int = 5000):
  """Stage 1 until every budget is met. Returns the final PruneState (snapshots, step-0 tables)."""
  model = DotModel(mode="prune")
  users, items = sample_batch(rng, data)
  params = model.init(jax.random.key(SEED), users, items)["params"]
  # clip → coupled weight decay (it lifts the negative thresholds) → Adam, as the paper trains.
  tx = optax.chain(optax.clip_by_global_norm(100.0), optax.add_decayed_weights(1e-2),
                   optax.adam(1e-2))
  opt_state = tx.init(params)
  tables = model.apply({"params": params}, method=DotModel.tables)
  budgets = cerp_jax.budgets(TARGET_SPARSITIES, 2 * BUCKET_SIZE * DIM)
  initial = {k: params["embedding"][k] for k in ("P", "Q")}  # step-0 raw tables, for rewinding
  prune_state = cerp_jax.init_prune_state(budgets, tables, initial)
  step = make_prune_step(model, tx, gamma=1e-5)
  for step_no in range(max_steps):
    if bool(prune_state.done):
      break
    users, items = sample_batch(rng, data)
    params, opt_state, prune_state, nonzeros = step(params, opt_state, prune_state,
                                                    jnp.int32(step_no), users, items)
  for s, b, ok, at, nnz in zip(TARGET_SPARSITIES, budgets, prune_state.reached, prune_state.step,
                               prune_state.nonzeros):
    print(f"stage 1: budget {s:.2f}: {int(b)} non-zeros of {2 * BUCKET_SIZE * DIM}: "
          + (f"reached at step {int(at)} with {int(nnz)} non-zeros" if ok else "NOT reached"))
  return prune_state


def retrain(data, rng, prune_state, index: int, steps: int = 300):
  """Stage 2 for budget ``index``: rewind the step-0 tables under the snapshot's mask and retrain
  with the mask fixed. Returns the retrained variables ``{'params', 'masks'}``."""
  model = DotModel(mode="retrain")
  snapshot = {k: v[index] for k, v in prune_state.snapshots.items()}
  masks = cerp_jax.masks_from_snapshot(snapshot)            # 1[snapshot ≠ 0], float32
  rewound = cerp_jax.rewind(prune_state.initial, masks)     # step-0 values ⊙ mask
  params = {"embedding": {k: jnp.asarray(v) for k, v in rewound.items()}}
  masks = {"embedding": {k: jnp.asarray(v) for k, v in masks.items()}}
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  step = make_retrain_step(model, tx)
  for _ in range(steps):
    users, items = sample_batch(rng, data)
    params, opt_state = step(params, masks, opt_state, users, items)
  return {"params": params, "masks": masks}


def masked_nonzeros(variables) -> int:
  """Raw P, Q entries that are non-zero where the mask is 0. A pruned entry gets no gradient (it is
  multiplied by 0), so Adam never moves it off its rewound 0: this stays 0."""
  raw, masks = variables["params"]["embedding"], variables["masks"]["embedding"]
  return sum(int(jnp.count_nonzero(jnp.where(masks[k] == 0, raw[k], 0.0))) for k in masks)


def score_users(variables, users):
  """The evaluator's score function (jitted once by it): ``users [B]`` → ``[B, NUM_ITEMS]``."""
  return DotModel(mode="retrain").apply(variables, users, method=DotModel.score_users)


def most_popular(pop, users):
  """Scores of the most-popular ranking (training counts), the floor a model must beat."""
  return jnp.broadcast_to(pop, (users.shape[0], pop.shape[0]))


def main():
  data = make_data()
  rng = np.random.default_rng(SEED)
  print(f"data: {NUM_USERS} users, {NUM_ITEMS} items, {data.train.nnz} train and "
        f"{data.test.nnz} test interactions")
  prune_state = prune(data, rng)
  if not bool(prune_state.done):
    print("error: not every budget was reached; raise max_steps or the thresholds' start",
          file=sys.stderr)
    return 1
  evaluator = cerp_jax.Evaluator(data, "test", ks=(10, 20), batch_size=NUM_USERS)
  pop = jnp.asarray(np.asarray(data.train.sum(axis=0)).ravel(), jnp.float32)
  print(f"most-popular: test recall@20={evaluator.evaluate(most_popular, pop)['recall@20']:.4f}")
  full_bytes = (NUM_USERS + NUM_ITEMS) * DIM * 4 + 16
  for i, s in enumerate(TARGET_SPARSITIES):
    variables = retrain(data, rng, prune_state, i)
    tables = DotModel(mode="retrain").apply(variables, method=DotModel.tables)
    blob, report = cerp_jax.pack({k: np.asarray(v) for k, v in tables.items()})
    restored = cerp_jax.unpack(blob)
    assert all(np.array_equal(restored[k], np.asarray(tables[k])) for k in tables)
    kept = int(sum(m.sum() for m in variables["masks"]["embedding"].values()))
    print(f"budget {s:.2f}: retrained with the snapshot's mask: "
          f"{int(cerp_jax.count_nonzeros(tables))} non-zeros (mask keeps {kept}); masked entries "
          f"non-zero after retraining: {masked_nonzeros(variables)}")
    metrics = evaluator.evaluate(score_users, variables)
    print(f"budget {s:.2f}: packed {report['packed_bytes']} bytes vs {full_bytes} for the float32 "
          f"[{NUM_USERS + NUM_ITEMS}, {DIM}] table; test recall@20={metrics['recall@20']:.4f} "
          f"ndcg@20={metrics['ndcg@20']:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
