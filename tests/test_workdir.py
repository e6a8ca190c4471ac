"""The workdir's contract: config.json on resume, config values (cerp_jax/workdir.py)."""

import json

import pytest

from cerp_jax import workdir as workdir_lib


def test_workdir_from_before_an_added_field_still_resumes(test_config, tmp_path):
  """A config.json written before prune.threshold_weight_decay existed matches its default (the
  original behaviour), and only that: a run asking for another value is refused."""
  wd = tmp_path / "w"
  wd.mkdir()
  old = json.loads(test_config.to_json_best_effort())
  del old["prune"]["threshold_weight_decay"]
  (wd / "config.json").write_text(json.dumps(old))
  workdir_lib.check_config(test_config, str(wd))
  c = test_config.copy_and_resolve_references()
  c.prune.threshold_weight_decay = 1e-3
  with pytest.raises(ValueError, match="prune.threshold_weight_decay: -1.0 → 0.001"):
    workdir_lib.check_config(c, str(wd))


def test_pack_value_dtype_is_eval_time_and_checked(test_config, tmp_path):
  """``pack`` (eval-time packing) neither blocks a resume, with or without the field in an older
  config.json, nor passes a value dtype the packer does not know."""
  wd = tmp_path / "w"
  wd.mkdir()
  old = json.loads(test_config.to_json_best_effort())
  del old["pack"]
  (wd / "config.json").write_text(json.dumps(old))
  c = test_config.copy_and_resolve_references()
  c.pack.value_dtype = "int8"
  workdir_lib.check_config(c, str(wd))
  c.pack.value_dtype = "int4"
  with pytest.raises(ValueError, match="config.pack.value_dtype='int4'"):
    workdir_lib.validate_config(c)
