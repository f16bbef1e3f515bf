"""Recompute instead of store: the ViT train step with parts of each block rematerialised, A/B in one process.

Each variant is mtljax's real jitted ViT step (``vit_case.mtljax_contender``: HPS, 3 tasks, batch 64,
Adam), built with some of ``mtljax.models.layers`` swapped while it is traced:

* ``saved``: flax's ``nn.gelu`` in the MLP, which keeps its ``tanh`` (and three more products) for the
  backward pass — the step as it was before ``layers.gelu``;
* ``gelu``: the library as it is (``layers.gelu``: ``nn.gelu`` under ``jax.checkpoint``, only its input
  kept);
* ``gelu+ln``: also every block's LayerNorm under ``flax.linen.remat``;
* ``gelu+attn``: also the attention core (``layers.attend``) under ``jax.checkpoint``.

All variants are timed in the same interleaved rounds (``common.measure``); the speed-up of a variant
is the median over rounds of ``saved``'s round median ÷ its own. The loss after the timed steps is
printed for each: the variants start from the same parameters and data, so equal losses mean the
recomputation changed no rounding.

  python benchmarks/remat_ab.py --case Ti:32x32x3:p4 --rounds 8
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (add_host_allocator_flag, apply_host_allocator, environment, fmt_ratio, measure,  # noqa: E402
                    median_time, speed_ratio)
from vit_case import Case, mtljax_contender  # noqa: E402

import mtljax.models.layers as layers  # noqa: E402

VARIANTS = ("saved", "gelu", "gelu+ln", "gelu+attn")
_remat_norm = nn.remat(lambda module, x: nn.LayerNorm.__call__(module, x))


def _remat_layer_norm(self, x, ctx=None):
    return _remat_norm(self, x)


def build(variant: str, case: Case, batch: int, classes: list[int]):
    """The compiled step of ``variant`` (``layers`` is restored afterwards)."""
    saved = layers.gelu, layers.LayerNorm.__call__, layers.attend
    try:
        if variant == "saved":
            layers.gelu = nn.gelu
        if "ln" in variant.split("+"):
            layers.LayerNorm.__call__ = _remat_layer_norm
        if "attn" in variant.split("+"):
            layers.attend = jax.checkpoint(saved[2], static_argnums=(3,))
        c, _, _ = mtljax_contender(case, "float32", batch, classes)
    finally:
        layers.gelu, layers.LayerNorm.__call__, layers.attend = saved
    c.name = variant
    return c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", default="Ti:32x32x3:p4", help="VARIANT:HxWxC:pPATCH (VARIANT Ti|S|B|tiny)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--per-round", type=int, default=3)
    add_host_allocator_flag(ap)
    args = ap.parse_args(argv)
    apply_host_allocator(args.host_allocator)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    if "saved" not in variants:
        variants.insert(0, "saved")
    try:
        case = Case.parse(args.case)
    except ValueError as e:
        ap.error(f"--case: {e}")
    print(f"command: python benchmarks/remat_ab.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(environment())
    cs = [build(v, case, args.batch, [10, 10, 19]) for v in variants]
    measure(cs, rounds=args.rounds, per_round=args.per_round)
    base = cs[0]
    print(f"\n### {case.label}, batch {args.batch}, float32: recomputed parts vs stored residuals\n")
    print("| variant | ms / step | speed-up vs saved (min–max over rounds) | loss after the timed steps |")
    print("|---|---:|---:|---:|")
    for c in cs:
        loss = float(c.box["metrics"]["loss"])
        print(f"| {c.name} | {1e3 * median_time(c):.1f} | {fmt_ratio(speed_ratio(c, base))} | {loss:.7f} |")


if __name__ == "__main__":
    main()
