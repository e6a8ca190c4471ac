"""Memory–accuracy frontier on Gowalla with the MF backbone (runs on a CPU; hours).

  python sweep.py --config=configs/sweep_gowalla_mf.py --workdir=runs/sweep_gowalla_mf
  python sweep.py --config=configs/sweep_gowalla_mf.py --solve_only   # print the settings only

Every method (full table at smaller d, QR, hashing, PEP, CERP, and magnitude pruning of the trained
reference table, which retrains nothing) at 2.5 %, 5 % and 10 % of the
full float32 [N, 128] table (add 0.25 with ``--config.sweep.budgets='(0.025,0.05,0.1,0.25)'``: CERP's
stage 1 there, b = 16,667, is ~2.5 h on a 2-core CPU, since every step's Adam update covers all
4·b·d entries of P, Q and their thresholds), sized by cerp_jax/budget.py, trained with the
defaults' MF retraining protocol (2048 triples/step, Adam 1e-3, L2 1e-4·½, ≤ 300 epochs, validation
NDCG@20 every 5 epochs, patience 5); CERP and PEP first run the paper's stage 1 (10 groups ×
(1+5), Adam 1e-3 with coupled decay 1e-5, clip 100), CERP's thresholds from −100 and PEP's from −15.
"""

import ml_collections

from configs import gowalla_mf


def sweep_settings(c, budgets=(0.025, 0.05, 0.1), reference_dim=128, seeds=(3407,),
                   lrs=(1e-3,)):
  """Adds the ``sweep`` block to a train config (fields commented)."""
  c.sweep = ml_collections.ConfigDict()
  # method specs <method>[@<value dtype>] (cerp_jax.budget.parse_method): 'full@int8' is sized for
  # int8 packed tables, trained in float32, packed int8 after training
  c.sweep.methods = ("full", "qr", "hash", "pep", "cerp", "magnitude")
  c.sweep.budgets = tuple(budgets)     # fractions of the full float32 [N, reference_dim] table
  c.sweep.reference_dim = reference_dim  # d_ref: the full table's width, and d of QR/hash/PEP/CERP
  c.sweep.reference = True             # also train the full table at d_ref (the plot's marker;
                                       # magnitude prunes it)
  c.sweep.extra_reference_dims = ()    # further full-table references at these d (plot markers)
  c.sweep.seeds = tuple(seeds)         # every (method, budget) runs with each seed
  c.sweep.lrs = tuple(lrs)             # the same retraining learning-rate grid for every method
  c.sweep.cerp_sparsity = 0.5          # CERP's b is sized at this target sparsity (then filled)
  c.sweep.window = (0.9, 1.0)          # measured packed bytes must lie in this share of the budget
  # magnitude: entries every row keeps before the global ranking, chosen on validation (values
  # with N·m > the budget's non-zeros skipped)
  c.sweep.magnitude_min_per_row = (0, 1, 2, 4, 8)
  return c


def get_config(arg: str = ""):
  c = gowalla_mf.get_config(arg)
  c.model.dim = 128
  c.checkpoint_every_steps = 20_000
  return sweep_settings(c)
