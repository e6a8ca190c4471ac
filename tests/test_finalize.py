"""eval.py's logic (cerp_jax/finalize.py); end-to-end runs are in test_progress, test_checkpoint,
test_baselines and test_packing."""

import pytest

from cerp_jax import finalize


def test_reference_that_is_not_a_run_is_refused_before_any_work(tmp_path):
  with pytest.raises(FileNotFoundError, match="--reference="):
    finalize.reference_metrics(str(tmp_path))
