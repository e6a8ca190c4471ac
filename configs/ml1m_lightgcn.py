"""CERP + LightGCN on ML-1M (the BARS/LCF "m1" split, ../shared/data/movielens-1m-m1; 6,022 users ×
3,043 items). RecZoo's full LightGCN reaches Recall@20 0.2576 / NDCG@20 0.2427 on this split. The
paper's LightGCN settings; stage 1 from −100 thresholds is a GPU job (full propagation per step)."""

from configs import default
from configs import gowalla_lightgcn


def get_config(arg: str = ""):
  c = default.get_config(arg)
  c.data.name = "ml1m_m1"
  c.data.path = "movielens-1m-m1"
  gowalla_lightgcn.lightgcn_settings(c, "parity" in arg)
  return c
