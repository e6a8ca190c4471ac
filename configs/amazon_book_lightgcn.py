"""CERP + LightGCN on Amazon-Book (KGAT version, ../shared/data/amazon-book-kgat; 70,679 users ×
24,915 items; N = 95,594 needs b ≥ 310). The paper's LightGCN settings; a GPU config."""

from configs import default
from configs import gowalla_lightgcn


def get_config(arg: str = ""):
  c = default.get_config(arg)
  c.data.name = "amazon_book_kgat"
  c.data.path = "amazon-book-kgat"
  gowalla_lightgcn.lightgcn_settings(c, "parity" in arg)
  return c
