"""LightGCN propagation on Gowalla: forward + backward of the 3-layer mean, against its memory bound.

  python benchmarks/propagation.py                  # d = 64 and 128, every variant
  python benchmarks/propagation.py --dims=128 --variants=bcsr --reps=5
  python benchmarks/propagation.py --variants=native --orders=rcm,none   # the node order's effect

Times ``value_and_grad(sum(propagate(E) * W))`` (the layer-0 table's gradient through the mean of layers
0..3, as a training step needs it) on Gowalla's training graph, median over ``--reps`` calls after a
warm-up, and prints each variant beside two bounds computed from the bandwidth measured in the same
run (the machine's copy bandwidth, as benchmarks/run.py measures it), for 2L products Â @ H (L
forward, L backward: Â is symmetric, so the backward pass is the same product):

  gather model   2L × (E·(4d + 8) + 2·N·4d) bytes / bandwidth: stream the E non-zeros (value +
                 column, 8 B), gather one row of H per non-zero with no reuse from cache (4d B),
                 read H and write the result once;
  floor          2L × (E·8 + 2·N·4d) bytes / bandwidth: the compulsory traffic alone (every gathered
                 row hits the cache), which no implementation can beat.

A variant whose gathers reuse cached rows beats the gather model; one that materialises the [E, d]
gathered products pays more than it.

Each variant runs on the graph stored in each of ``--orders``: ``rcm`` (the project's locality order,
cerp_jax/graph.py; the model moves vectors into it and back, and these two permutations are timed
with the ``native`` variant, as a training step pays them) or ``none`` (node ids, users then items,
and no permutation: the product as it ran before the order was introduced).

Variants: ``native`` (the project's: ``models.LightGCN.propagate``, i.e. the C++ kernel of
cerp_jax/spmm.py on the CPU with the symmetric custom VJP; BCSR when it does not build or
``CERP_SPMM=bcsr``), ``bcsr``
(jax.experimental.sparse.BCSR with the same VJP, the project's product before the kernel), ``segment`` (gather, scale, ``segment_sum`` over sorted rows, same VJP trick), ``bcsr_autodiff``
(BCSR without the custom VJP).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
flags.DEFINE_list("dims", ["64", "128"], "Embedding widths d.")
flags.DEFINE_list("variants", ["native", "bcsr", "segment", "bcsr_autodiff"],
                  "Propagation variants.")
flags.DEFINE_integer("reps", 5, "Timed calls per (variant, d) after a warm-up call.")
flags.DEFINE_integer("layers", 3, "LightGCN layers L.")
flags.DEFINE_list("orders", ["rcm"], "Node orders of the stored graph: rcm (the project's), none.")


def _variants(graph: dict, n: int):
  """``{name: fn(h [N, d]) -> Â @ h}`` with the VJPs each variant uses."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cerp_jax import models  # pylint: disable=g-import-not-at-top
  from cerp_jax import spmm as spmm_lib  # pylint: disable=g-import-not-at-top
  rows = jnp.asarray(graph["rows"])

  def seg(h):
    return jax.ops.segment_sum(h[graph["indices"]] * graph["data"][:, None], rows,
                               num_segments=n, indices_are_sorted=True)

  seg_sym = jax.custom_vjp(seg)
  seg_sym.defvjp(lambda h: (seg(h), None), lambda _, ct: (seg(ct),))

  def bcsr(h):
    return spmm_lib.bcsr_matmul(graph, h)

  bcsr_sym = jax.custom_vjp(bcsr)
  bcsr_sym.defvjp(lambda h: (bcsr(h), None), lambda _, ct: (bcsr(ct),))
  # native: in the rcm order the model's own propagate (permutations included), see main
  return {"native": lambda h: models.symmetric_spmm(graph, h),
          "bcsr": bcsr_sym,
          "segment": seg_sym,
          "bcsr_autodiff": lambda h: spmm_lib.bcsr_matmul(graph, h)}


def _time(fn, *args, reps: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import timing  # pylint: disable=g-import-not-at-top  (benchmarks/timing.py: machine limits)
  from cerp_jax import cli  # pylint: disable=g-import-not-at-top
  from cerp_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from cerp_jax import graph as graph_lib  # pylint: disable=g-import-not-at-top
  cli.setup()
  from configs import gowalla_lightgcn  # pylint: disable=g-import-not-at-top
  config = gowalla_lightgcn.get_config()
  data = cli.run_cli(data_lib.load_interactions, config)
  from cerp_jax import models  # pylint: disable=g-import-not-at-top
  adj = graph_lib.normalized_adjacency(data.train)
  n, e = adj.shape[0], adj.nnz
  for o in FLAGS.orders:
    if o not in ("rcm", "none"):
      raise app.UsageError(f"--orders: {o!r} is not one of rcm, none")
  graphs = {o: {k: jnp.asarray(v) for k, v in graph_lib.graph_arrays(adj, o == "rcm").items()}
            for o in FLAGS.orders}
  m = timing.measure_machine()
  bw = m["memory_gbs"] * 1e9
  print(f"machine: {jax.devices()[0]}, memory {m['memory_gbs']:.1f} GB/s, fp32 matmul "
        f"{m['matmul_gflops']:.0f} GFLOP/s; graph N = {n:,}, E = {e:,}, L = {FLAGS.layers}")
  print("| variant | order | d | fwd + bwd (s) | gather model (s) | × model | floor (s) | × floor | "
        "forward only (s) |")
  print("|---|---|---|---|---|---|---|---|---|")
  for d in (int(x) for x in FLAGS.dims):
    rng = np.random.default_rng(0)
    h0 = jnp.asarray(rng.standard_normal((n, d), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((n, d), dtype=np.float32))
    model = 2 * FLAGS.layers * (e * (4 * d + 8) + 2 * n * 4 * d) / bw
    floor = 2 * FLAGS.layers * (e * 8 + 2 * n * 4 * d) / bw
    for (order, graph), name in ((g, v) for g in graphs.items() for v in FLAGS.variants):
      lgn = models.LightGCN(num_nodes=n, num_edges=e, num_layers=FLAGS.layers)
      spmm = _variants(graph, n)[name]
      model_propagate = name == "native" and order == "rcm"

      def propagate(h, spmm=spmm, lgn=lgn, graph=graph, model_propagate=model_propagate):
        if model_propagate:
          return lgn.apply({"graph": graph}, h, method=models.LightGCN.propagate)
        out, x = h, h
        for _ in range(FLAGS.layers):
          x = spmm(x)
          out = out + x
        return out / (FLAGS.layers + 1)

      # value and gradient: the propagation is linear, so the gradient alone would not need the
      # forward products and XLA would drop them
      fwd_bwd = jax.jit(jax.value_and_grad(lambda h, propagate=propagate: jnp.sum(propagate(h) * w)))
      fwd = jax.jit(propagate)
      t = _time(fwd_bwd, h0, reps=FLAGS.reps)
      tf = _time(fwd, h0, reps=FLAGS.reps)
      print(f"| {name} | {order} | {d} | {t:.3f} | {model:.3f} | {t / model:.2f} | {floor:.3f} | "
            f"{t / floor:.1f} | {tf:.3f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
