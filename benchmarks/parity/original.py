"""The authors' code as the parity harness runs it: a patched scratch copy, commands, log parsers.

Nothing of the original is stored in this repository. :func:`prepare` copies a local checkout's
``CERP/`` and ``CERP-LightGCN/code/`` (not their data) into a scratch folder and applies
:data:`PATCHES` there; each patch is a compatibility or logging change, never a change of the
algorithm (docs/parity.md).
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import shutil

# (file, old text, new text, why). ``{name}`` is the dataset name being registered.
PATCHES = (
    ("CERP/models/factorizer.py", "ExponentialLR(self.optimizer, gamma=opt['lr_exp_decay'], verbose=True)",
     "ExponentialLR(self.optimizer, gamma=opt['lr_exp_decay'])",
     "torch 2.13 refuses ExponentialLR(verbose=...); the decay is 1 (no-op) either way"),
    ("CERP/utils/util.py", 'choices={"gowalla", "yelp2020"}', 'choices={"gowalla", "yelp2020", "{name}"}',
     "register the dataset name"),
    ("CERP/engine.py", 'self._opt["data_path"] = "./data/yelp2020"',
     'self._opt["data_path"] = "./data/" + self._opt["data_type"]',
     "register the dataset name (the original maps every non-Gowalla name to ./data/yelp2020)"),
    ("CERP/engine.py", 'f"Reach the target parameter: {max_candidate_p}',
     'f"Reach the target parameter at step {self._factorizer.train_step_idx}: {max_candidate_p}',
     "logging only: print the step of each snapshot (the original prints sparsity every 100 steps)"),
    ("CERP-LightGCN/code/parse.py", 'choices=["gowalla", "yelp2020"]',
     'choices=["gowalla", "yelp2020", "{name}"]', "register the dataset name"),
    ("CERP-LightGCN/code/world.py", "all_dataset = ['gowalla', \"yelp2020\"]",
     "all_dataset = ['gowalla', \"yelp2020\", \"{name}\"]", "register the dataset name"),
    ("CERP-LightGCN/code/register.py", "if world.dataset_name in ['gowalla', \"yelp2020\"]:",
     "if world.dataset_name in ['gowalla', \"yelp2020\", \"{name}\"]:", "register the dataset name"),
)


def prepare(checkout: os.PathLike | str, scratch: os.PathLike | str, name: str) -> list[str]:
  """Copies the original's code into ``scratch`` and applies :data:`PATCHES`.

  Args:
    checkout: a local checkout of the authors' repository (``CERP/`` and ``CERP-LightGCN/`` in it).
    scratch: destination (created; its ``CERP/res`` and data folders are kept across calls).
    name: dataset name to register.

  Returns:
    one line per applied patch.

  Raises:
    FileNotFoundError: the checkout lacks a file; ValueError: a patch's text is not found (another
      commit of the original).
  """
  checkout, scratch = pathlib.Path(checkout), pathlib.Path(scratch)
  for part in ("CERP", "CERP-LightGCN/code"):
    src = checkout / part
    if not src.is_dir():
      raise FileNotFoundError(f"{src}: not a checkout of xurong-liang/CERP")
    for path in src.rglob("*.py"):
      if "/data/" in str(path) or "/res/" in str(path):
        continue
      dst = scratch / part / path.relative_to(src)
      dst.parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(path, dst)
  applied = []
  for rel, old, new, why in PATCHES:
    path = scratch / rel
    text = path.read_text(encoding="utf-8")
    if old not in text:
      raise ValueError(f"{rel}: patch target not found ({old!r}); another commit of the original?")
    path.write_text(text.replace(old, new.replace("{name}", name)), encoding="utf-8")
    applied.append(f"{rel}: {why}")
  return applied


def prune_command(python: str, name: str, backbone: str, bucket_size: int, dim: int,
                  targets, threshold_init: float, seed: int, prepath: str, max_epochs: int) -> list:
  """``prune.py`` (stage 1) with the paper's settings except the options given here.

  Args:
    backbone: 'mlp' | 'lightgcn' (the original's ``--model gcn``).
  """
  return [python, "prune.py", "--data_type", name, "--model",
          "gcn" if backbone == "lightgcn" else backbone, "--bucket_size", str(bucket_size),
          "--latent_dim", str(dim), "--sparsity_rates", *[str(t) for t in targets],
          "--threshold_init", str(threshold_init), "--seed", str(seed), "--prepath", prepath,
          "--prune_max_epoch", str(max_epochs), "--device_id", "cpu"]


def retrain_mlp_command(python: str, name: str, bucket_size: int, dim: int, target: float,
                        seed: int, prepath: str) -> list:
  """``retrain.py`` (NCF-MLP stage 2; run from ``CERP/``)."""
  return [python, "retrain.py", "--data_type", name, "--model", "mlp", "--bucket_size",
          str(bucket_size), "--latent_dim", str(dim), "--retrain_emb_sparsity", str(target),
          "--seed", str(seed), "--prepath", prepath, "--device_id", "cpu"]


def retrain_lightgcn_command(python: str, name: str, bucket_size: int, dim: int, target: float,
                             emb_dir: str, seed: int = 2020, early_stop: int = 3) -> list:
  """CERP-LightGCN ``main.py`` (LightGCN stage 2; run from ``CERP-LightGCN/code/``)."""
  return [python, "main.py", "--recdim", str(dim), "--dataset_name", name,
          "--CERP_embedding_bucket_size", str(bucket_size),
          "--path_to_load_CERP_pruned_embs_for_retraining", emb_dir,
          "--retrain_sparsity", str(target), "--early_stop", str(early_stop),
          "--seed", str(seed), "--tensorboard", "0"]


_STEP_LINE = re.compile(r"\[Epoch (\d+)\|Step (\d+)\|Flag \d+\|Sparsity ([0-9.]+)\|Params (\d+)\|")
_SNAP_LINE = re.compile(r"Reach the target parameter at step (\d+): (\d+), target sparsity: ([0-9.]+)")


def parse_prune_log(text: str, steps_per_epoch: int) -> dict:
  """Stage-1 stdout → ``{"trajectory": [(steps done, sparsity)], "snapshots": {target: step}}``.

  The original prints ``[Epoch e|Step s|…|Sparsity x|…]`` every 100 steps after the update of
  global step ``e·steps_per_epoch + s`` (0-based), i.e. with that many + 1 updates done.
  """
  traj = [(int(e) * steps_per_epoch + int(s) + 1, float(x))
          for e, s, x, _ in _STEP_LINE.findall(text)]
  snaps = {round(float(t), 4): int(step) for step, _, t in _SNAP_LINE.findall(text)}
  return {"trajectory": traj, "snapshots": snaps}


def parse_mlp_retrain_log(text: str, ks=(5, 10, 20, 50)) -> list[dict]:
  """``ndcg_recall_log.txt`` of ``retrain.py`` → one dict per evaluation (epoch, recall@k, ndcg@k)."""
  out = []
  text = re.sub(r"np\.float(?:32|64)\(([^)]*)\)", r"\1", text)  # numpy ≥ 2 reprs
  blocks = re.findall(r"recalls: (\[[^\]]*\]), ndcgs: (\[[^\]]*\])\s*\n(\d+)\t", text)
  for rec, ndcg, epoch in blocks:
    r, n = ast.literal_eval(rec), ast.literal_eval(ndcg)
    out.append({"epoch": int(epoch), **{f"recall@{k}": float(v) for k, v in zip(ks, r)},
                **{f"ndcg@{k}": float(v) for k, v in zip(ks, n)}})
  return out


def parse_lightgcn_retrain_log(text: str, ks=(5, 10, 20, 50)) -> list[dict]:
  """CERP-LightGCN ``LightGCNres.txt`` → one dict per test (epoch before training, metrics)."""
  out = []
  for epoch, body in re.findall(r"\[Epoch (\d+)\] \| \[(\{.*\})\]", text):
    d = ast.literal_eval(body)
    out.append({"epoch": int(epoch) - 1,
                **{f"recall@{k}": float(v) for k, v in zip(ks, d["recall"])},
                **{f"ndcg@{k}": float(v) for k, v in zip(ks, d["ndcg"])}})
  return out
