"""Stage 2's model selection: when to evaluate, early stopping, and what result.json reports.

Stage 2 (:func:`cerp_jax.train.retrain_stage`) evaluates on ``eval.selection_split`` (full ranking,
or a seeded user sample) every ``eval.every_epochs`` epochs at ``eval.timing``: 'end' (after the
epoch), 'start' (before its first step, as the authors' LightGCN code) or 'first_step' (after its
first step, as their NCF/MF code). The parameters of the best ``eval.selection_metric`` so far are
kept; ``eval.patience`` evaluations without improvement stop training. The test metrics reported
are those of the kept parameters.
"""

from __future__ import annotations

import time
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from cerp_jax import data as data_lib
from cerp_jax import evaluation
from cerp_jax import loop as loop_lib
from cerp_jax import models


def eval_due(epoch: int, ec: ml_collections.ConfigDict) -> bool:
  """Is a selection evaluation due in ``epoch`` (``ec`` = ``config.eval``)? 'end': after epochs
  every−1, 2·every−1, …; 'start' / 'first_step': before / after the first step of epochs 0,
  every, 2·every, …"""
  if ec.timing == "end":
    return (epoch + 1) % ec.every_epochs == 0
  return epoch % ec.every_epochs == 0


def horizon(meta: dict, epochs_done: int, config: ml_collections.ConfigDict) -> int:
  """Epochs stage 2 runs if validation does not improve again: early stopping's horizon."""
  if meta["done"]:
    return epochs_done
  ec = config.eval
  return min(config.retrain.max_epochs,
             epochs_done + (ec.patience - meta["bad_evals"]) * ec.every_epochs)


class Selection:
  """Selection evaluations of one stage-2 run, on its :class:`cerp_jax.loop.Loop`.

  The selected parameters live in ``loop.best`` (saved with every checkpoint); ``loop.meta`` holds
  ``history`` (one entry per evaluation: epoch, step, metrics), ``best_value``, ``best_epoch`` and
  ``bad_evals``, and gets ``done`` when training should stop.

  Args:
    config: the run's config.
    data: the interactions evaluated against (training items masked).
    model: the stage-2 model.
    loop: the run's loop (state, masks, LightGCN graph, sharding plan).
    tag: the run's tag, ``sparsity_0.5000`` | ``full``.
  """

  def __init__(self, config, data: data_lib.Interactions, model: models.Recommender,
               loop: loop_lib.Loop, tag: str):
    ec = config.eval
    self.config, self.data, self.loop, self.tag = config, data, loop, tag
    self.evaluator = evaluation.Evaluator(data, ec.selection_split, ec.ks, ec.batch_size,
                                          user_sample=ec.user_sample, seed=ec.sample_seed,
                                          plan=loop.plan)
    self.score_fn = models.make_score_fn(model, data.num_users)
    self.vectors_fn = models.make_vectors_fn(model)
    self._test_eval = None  # the test split's evaluator, built on first use

  def evaluate(self, params, batch_stats, evaluator: evaluation.Evaluator) -> dict:
    """``evaluator``'s metrics of the given parameters (with the loop's masks and graph)."""
    v = models.model_variables(params, batch_stats, self.loop.state.masks, self.loop.consts)
    return evaluator.evaluate(self.score_fn, (v, self.vectors_fn(v)), return_topk=False,
                              progress=self.config.progress_bar)

  def select(self, epoch: int, rec: dict) -> bool:
    """One selection evaluation of the current state: its metrics into the epoch's record ``rec``
    and the history, a copy of improved parameters, patience; returns ``meta['done']``."""
    loop, ec = self.loop, self.config.eval
    state, meta, metric = loop.state, loop.meta, ec.selection_metric
    res = self.evaluate(state.params, state.batch_stats, self.evaluator)
    rec.update({f"{ec.selection_split}/{k}": v for k, v in res.items()
                if "@" in k or k in ("num_users_evaluated", "sampled")})
    meta["history"].append({"epoch": epoch, "step": int(state.step),
                            **{k: v for k, v in res.items() if "@" in k}})
    if meta["best_value"] is None or res[metric] > meta["best_value"]:
      meta.update(best_value=res[metric], best_epoch=epoch, bad_evals=0)
      # a copy: the state's buffers are donated to the next block.
      loop.best = jax.tree_util.tree_map(jnp.copy, {"params": state.params,
                                                    "batch_stats": state.batch_stats})
    else:
      meta["bad_evals"] += 1
    logging.info("retrain %s epoch %d (step %d): %s | best %s %.4f @ epoch %d", self.tag, epoch,
                 int(state.step), evaluation.describe(res), metric, meta["best_value"],
                 meta["best_epoch"])
    # wall seconds of the stage so far, without the learning curve's own test evaluations
    rec["seconds"] = loop.seconds() - meta.get("test_curve_seconds", 0.0)
    if ec.get("test_curve", False):
      self._test_curve(rec)
    last_due = ec.timing != "end" and epoch + ec.every_epochs >= self.config.retrain.max_epochs
    if meta["bad_evals"] >= ec.patience or last_due:
      meta["done"] = True
    return meta["done"]

  def _test_curve(self, rec: dict) -> None:
    """``eval.test_curve``: the current parameters' test metrics into ``rec`` (``test/…``), for a
    learning curve only (never used for selection); their wall time is kept out of ``seconds``."""
    t0 = time.perf_counter()
    state = self.loop.state
    res = self.evaluate(state.params, state.batch_stats, self._test_evaluator())
    rec.update({f"test/{k}": v for k, v in res.items() if "@" in k})
    meta = self.loop.meta
    meta["test_curve_seconds"] = meta.get("test_curve_seconds", 0.0) + time.perf_counter() - t0

  def _test_evaluator(self) -> evaluation.Evaluator:
    """The test split's evaluator (``eval.test_user_sample``), built once."""
    if self._test_eval is None:
      ec = self.config.eval
      self._test_eval = evaluation.Evaluator(self.data, "test", ec.ks, ec.batch_size,
                                             user_sample=ec.test_user_sample, seed=ec.sample_seed,
                                             plan=self.loop.plan)
    return self._test_eval

  def test(self) -> dict:
    """Test metrics of the selected parameters: the selection evaluation's own when it ran on the
    same test users, else a test evaluation (``eval.test_user_sample``)."""
    ec, meta, best, ev = self.config.eval, self.loop.meta, self.loop.best, self.evaluator
    if ec.selection_split == "test" and ec.test_user_sample == ec.user_sample:
      epochs = [h["epoch"] for h in meta["history"]]
      test_res = dict(meta["history"][epochs.index(meta["best_epoch"])])
      test_res.update(split="test", num_users_evaluated=ev.users.size,
                      num_users_total=ev.num_users_total, sampled=ev.sampled)
      return test_res
    return self.evaluate(best["params"], best["batch_stats"], self._test_evaluator())

  def result(self, target: Optional[float], snapshot_info: dict) -> dict:
    """``retrain/<tag>/result.json`` of the finished run: the selection, its history, the test
    metrics, and with ``eval.report='per_metric_max'`` each metric's maximum over the history (the
    original's report)."""
    ec, loop = self.config.eval, self.loop
    meta = loop.meta
    test_res = self.test()
    result = {
        "target": self.tag, "target_sparsity": target, "best_epoch": meta["best_epoch"],
        "selection": {"split": ec.selection_split, "metric": ec.selection_metric,
                      "value": meta["best_value"]},
        "epochs": meta["epoch"], "steps": int(loop.state.step),
        "steps_per_epoch": loop.steps_per_epoch,
        "train_seconds": meta.get("train_seconds", 0.0), "seconds": meta["seconds"],
        "snapshot": snapshot_info, "history": meta["history"],
        "test": {k: v for k, v in test_res.items() if k not in ("topk", "users")},
    }
    if ec.report == "per_metric_max":
      result["test_per_metric_max"] = {
          k: max(h[k] for h in meta["history"]) for k in meta["history"][0] if "@" in k}
    return result
