"""CERP with the MF backbone on Gowalla (the paper's stage-1 settings; the defaults' MF retraining).

python train.py --config=configs/gowalla_mf.py --workdir=runs/gowalla_mf
Reference: --config=configs/gowalla_mf.py:full (the full [N, 128] table trained by the same code).
"""

from configs import default


def get_config(arg: str = ""):
  c = default.get_config(arg)
  c.data.name = "gowalla"
  c.data.path = "gowalla"
  c.model.backbone = "mf"
  return c
