"""Project defaults: the paper's model, optimizer and pruning values plus cerp_jax's changes to the
protocol (resampled negatives, a validation split, selection on validation NDCG@20).

Presets: ``:fast`` starts the thresholds at the weights' scale (skips stage 1's idle ~90 k steps;
configs/gowalla_mlp.py adds a larger coupled decay on the thresholds and a ramp of their multiplier
gk, which the MLP needs);
``--config=configs/<x>.py:parity`` reproduces the authors' protocol (fixed negatives, the authors'
epoch, no validation split, test NDCG@5 selection, per-metric maxima); ``:full`` trains the
uncompressed full table with the same code (the reference). Arguments combine with commas
(``:parity,full``).
"""

import ml_collections


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.seed = 3407                  # the authors' CERP seed: init, samplers of both stages.
  c.stage = "all"                # 'prune' | 'retrain' | 'all'.
  c.progress_bar = True          # tqdm bars with ETA.
  c.checkpoint_every_steps = 20_000  # also at every epoch end / evaluation.
  c.target_sparsities = (0.5, 0.8)   # of the 2·b·d meta-table entries; budget int((1−s)·2bd).
  c.prune_workdir = ""            # stage=retrain only: retrain from this workdir's finished stage 1
                                 # (its data/model/prune/sampling/seed/targets must match).

  # Devices (docs/scaling_out.md; cerp_jax/sharding.py). A run resumes on any of these settings.
  c.mesh_axes = ("data",)        # | ('data', 'model').
  c.mesh_shape = ()              # sizes per axis; () = every device on 'data'; one -1 = the rest.
  c.shard_embedding_rows_min = 100_000  # embedding leaves with ≥ this many rows: split on 'model'.
  c.distributed = False          # jax.distributed.initialize() (also $CERP_DISTRIBUTED=1).
  c.coordinator_address = ""     # 'host:port' of process 0; '' = $JAX_COORDINATOR_ADDRESS / auto.
  c.num_processes = 0            # 0 = $CERP_NUM_PROCESSES or JAX's cluster auto-detection.
  c.process_id = -1              # -1 = $CERP_PROCESS_ID or JAX's cluster auto-detection.

  c.data = ml_collections.ConfigDict()
  c.data.name = "gowalla"
  c.data.format = "lightgcn"     # 'lightgcn' (train.txt/test.txt) | 'ml100k' (raw u.data).
  c.data.path = "gowalla"        # folder under the data root, or absolute.
  c.data.root = ""               # '' → $CERP_DATA_DIR, else ../shared/data.
  c.data.loader = "text"         # 'text' (plain reader) | 'tfds' (array_record builder).
  c.data.tfds_data_dir = ""      # '' → $TFDS_DATA_DIR or TFDS's default.
  c.data.num_users = 0           # 0 → user_list.txt, else max id + 1.
  c.data.num_items = 0           # 0 → item_list.txt, else max id + 1.
  c.data.valid_fraction = 0.1    # per-user share of train held out for selection (0 = none).
  c.data.valid_min_items = 3     # users with fewer train items keep all in train.
  c.data.test_fraction = 0.2     # ml100k only: per-user test share.
  c.data.split_seed = 2023

  c.model = ml_collections.ConfigDict()
  c.model.embedding = "cerp"     # 'cerp' | 'full' | 'qr' | 'hash' | 'pep' (cerp_jax/baselines.py).
  c.model.backbone = "mf"        # 'mf' | 'mlp' (NCF-style) | 'lightgcn'.
  c.model.dim = 128              # d.
  c.model.bucket_size = 1000     # b: CERP rows of P and Q (needs ceil(N/b) ≤ b); QR remainder rows.
  c.model.combine = "sum"        # 'sum' (paper) | 'concat'.
  c.model.threshold_type = "element-wise"  # | 'global'.
  c.model.threshold_init = -100.0          # the paper's: σ(−100) ≈ 0, nothing pruned at first.
  c.model.threshold_init_method = "all_ones"
  c.model.threshold_init_scale = 0.0  # > 0: init = logit(scale·sqrt(6/(b+d))) instead (:fast).
  c.model.full_init = "normal"   # full table: N(0, std²) | 'xavier_uniform'.
  c.model.full_init_std = 0.1
  c.model.qr_operation = "mult"  # QR (Shi et al. 2020): 'mult' (DLRM default) | 'add' | 'concat'.
  c.model.hash_rows = 10_000     # hashing trick: rows B of the one shared table.
  c.model.hash_num_hashes = 2    # hash functions; an entity's vector sums its k hashed rows.
  c.model.hash_seed = 0          # seeds the hash functions (not the run seed).
  c.model.pep_threshold_type = "element-wise"  # PEP: | 'dimension' | 'row' | 'global'.
  c.model.pep_threshold_init = -15.0           # PEP's code; use prune.gamma_init=0 (no CERP reg.).
  c.model.mlp_num_layers = 3
  c.model.mlp_dropout = 0.0
  c.model.mlp_eval_item_chunk = 2048
  c.model.gcn_num_layers = 3      # LightGCN layers L (the paper's 3).

  c.sampling = ml_collections.ConfigDict()
  c.sampling.mode = "resample"   # 'resample' each epoch | 'fixed' once (the authors').
  c.sampling.epoch = "positives" # 'positives' (all train positives) | 'parity' (the authors' draws).
  c.sampling.triples_per_positive = 1  # >1: that many (u, pos, neg) triples per positive, K=1 each.

  c.prune = ml_collections.ConfigDict()  # stage 1: pruning with the paper's settings.
  c.prune.groups_per_step = 10   # (user, positive) groups per step; 10 × 6 = 60 rows.
  c.prune.num_negatives = 5      # K.
  c.prune.eta = 100.0            # η of −Σ tanh²(η·e).
  c.prune.gamma_init = 1.0
  c.prune.gamma_decay = 0.5      # γ_e = γ_0 · decay^epoch.
  c.prune.l2_penalty = 0.0
  c.prune.lr = 1e-3
  c.prune.weight_decay = 1e-5    # coupled (added to the gradient before Adam).
  c.prune.threshold_weight_decay = -1.0  # ≥ 0: the thresholds' own coupled decay (MLP :fast).
  c.prune.gk_ramp_steps = 0      # > 0: thresholds scaled by gk = 1 + step/gk_ramp_steps (MLP :fast).
  c.prune.grad_clip = 100.0
  c.prune.max_epochs = 50
  c.prune.steps_per_block = 1000 # steps fused in one compiled scan.

  c.retrain = ml_collections.ConfigDict()  # stage 2 and the full-table reference.
  c.retrain.groups_per_step = 2048  # MF: 2048 (user, pos, neg) triples, LightGCN's batch.
  c.retrain.num_negatives = 1
  c.retrain.l2_penalty = 5e-5    # 1e-4 × ½ (LightGCN-PyTorch's decay × ½‖·‖²).
  c.retrain.lr = 1e-3
  c.retrain.weight_decay = 0.0
  c.retrain.grad_clip = 0.0
  c.retrain.max_epochs = 300
  c.retrain.lr_schedule = "constant"  # | 'cosine' (cerp_jax.train.learning_rate).
  c.retrain.lr_warmup_epochs = 0.0    # cosine: linear warm-up from 0 over these epochs.
  c.retrain.lr_decay_epochs = 0.0     # cosine: lr reaches lr·lr_final_fraction here (0: max_epochs).
  c.retrain.lr_final_fraction = 0.0
  c.retrain.ticket = "snapshot"  # | 'random': the control mask (same non-zeros per table, random places).
  c.retrain.steps_per_block = 64

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (5, 10, 20, 50)
  c.eval.batch_size = 1024       # users per scoring batch.
  c.eval.user_sample = 0         # 0 = all users; else a seeded sample (NCF-MLP on CPU).
  c.eval.test_user_sample = 0
  c.eval.sample_seed = 0
  c.eval.selection_split = "valid"
  c.eval.selection_metric = "ndcg@20"
  c.eval.every_epochs = 5
  c.eval.timing = "end"          # 'end': after epochs every-1, 2·every-1, …; 'start' / 'first_step':
                                 # before / after the first step of epochs 0, every, … (the authors'
                                 # LightGCN / NCF code; the parity presets).
  c.eval.patience = 5            # evaluations without improvement before stopping.
  c.eval.report = "best"         # 'best' checkpoint | 'per_metric_max' (the authors').
  c.eval.test_curve = False      # also evaluate test at each selection evaluation (a learning
                                 # curve in metrics.jsonl; never used for selection).

  c.pack = ml_collections.ConfigDict()  # eval.py's packed file (an eval-time option: not resumed on)
  c.pack.value_dtype = "float32"  # 'float32' | 'float16' | 'int8' (symmetric per-row scales); PTQ.

  for a in [a for a in (arg or "").split(",") if a]:
    if a == "parity":
      apply_parity(c)
    elif a == "full":
      c.model.embedding = "full"
    elif a == "fast":
      # Thresholds start where the faithful run begins to prune: σ(s) = 0.75 % of the Xavier bound
      # (Gowalla, b=1000, d=128: s ≈ −7.5 instead of −100, which the faithful run reaches after
      # ≈ 93 k steps of weight-decay-driven rise). Everything else is unchanged.
      c.model.threshold_init_scale = 0.0075
    else:
      raise ValueError(f"unknown config argument {a!r}: expected 'parity', 'full' and/or 'fast'")
  return c


def apply_parity(c):
  """The authors' protocol: fixed negatives and their epoch, no validation split, selection on test
  NDCG@5 with their evaluation moments, per-metric maxima."""
  c.sampling.mode = "fixed"
  c.sampling.epoch = "parity"
  c.data.valid_fraction = 0.0
  c.eval.selection_split = "test"
  c.eval.selection_metric = "ndcg@5"
  c.eval.timing = "start" if c.model.backbone == "lightgcn" else "first_step"
  c.eval.patience = 3
  c.eval.report = "per_metric_max"
  return c
