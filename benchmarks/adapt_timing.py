"""``python benchmarks/adapt.py timing --out DIR``: each adaptation method's compiled train step timed
alone, in interleaved rounds (:func:`benchmarks.common.measure`), its optimizer state's bytes and the
compiled step's temporary memory (the methods whose modules read each example's task also with
``config.data.task_per_example``: one backbone pass instead of one per task); then MULTI-LANE's inference (the test-time forward of a batch)
against the number of lanes, next to the frozen ViT alone. Writes ``DIR/timing.json``.

The parameters are freshly initialised (values do not change the time): no pretrained checkpoint is
needed. One device (the first).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile

import jax


# methods whose modules read each example's task: by default one backbone pass per task; with
# config.data.task_per_example one pass, each example through its own task's modules
PER_EXAMPLE = ("LoRA", "adapters", "prefix", "VPT", "soft injection")


class _Contender:
    def __init__(self, name, exp, fn, *args):
        self.name, self.exp, self.fn, self.args = name, exp, fn, list(args)

    def run(self):
        with jax.set_mesh(self.exp.mesh):
            out = self.fn(*self.args)
        if isinstance(out, tuple):  # a train step: carry the (donated) state on
            self.args[0] = out[0]
        jax.block_until_ready(out)


def _train_step(name, c):
    from mtljax.trainer.experiment import Experiment

    exp = Experiment(c, devices=jax.devices()[:1])
    with jax.set_mesh(exp.mesh):
        state, shardings = exp.init_state()
        step = exp.jit_train_step(shardings)
        batch = next(exp.train_batches())
        mem = step.lower(state, batch).compile().memory_analysis()
    contender = _Contender(name, exp, step, state, batch)
    contender.opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
    contender.temp_bytes = getattr(mem, "temp_size_in_bytes", None)
    return contender


def _forward(name, c):
    from mtljax.trainer.experiment import Experiment

    exp = Experiment(c, devices=jax.devices()[:1])
    with jax.set_mesh(exp.mesh):
        state, _ = exp.init_state()
        batch = next(exp.eval_batches())
        fn = jax.jit(lambda p, b: exp.objective.forward(p, b, train=False)[1])
    return _Contender(name, exp, fn, state.params, batch)


def _median_ms(c):
    return 1e3 * statistics.median(t for r in c.samples for t in r)


def timing(args, methods, make_config):
    from benchmarks.common import environment, measure
    from mtljax.data.factors import DOWNSTREAM_TASKS

    tmp = tempfile.mkdtemp(prefix="adapt-timing-")
    cfg = lambda spec, **kw: make_config(spec, os.path.join(tmp, "run"), 0, "", 0, args.num_train, **kw)  # noqa: E731
    steps = [_train_step(name, cfg(spec)) for name, spec in methods.items()]
    steps += [_train_step(f"{name}, one task per example", cfg(methods[name], **{"data.task_per_example": True}))
              for name in PER_EXAMPLE]
    print(f"train steps compiled; timing {args.rounds} rounds", flush=True)
    measure(steps, rounds=args.rounds, per_round=args.per_round)
    result = {"environment": environment(), "device": str(jax.devices()[0].device_kind),
              "batch_size": cfg(methods["LoRA"]).data.batch_size, "train_step": {}}
    for c in steps:
        result["train_step"][c.name] = dict(median_ms=_median_ms(c), opt_state_bytes=c.opt_bytes,
                                            temp_bytes=c.temp_bytes)
        print(f"  {c.name:18s} {_median_ms(c):8.2f} ms  optimizer state {c.opt_bytes:,} B", flush=True)

    lanes = [_forward("frozen ViT (probe)", cfg(methods["linear probe"], **{"data.tasks": DOWNSTREAM_TASKS[:1]}))]
    for t in range(1, len(DOWNSTREAM_TASKS) + 1):
        lanes.append(_forward(f"{t} lanes", cfg(methods["MULTI-LANE"], **{"data.tasks": DOWNSTREAM_TASKS[:t]})))
    measure(lanes, rounds=args.rounds, per_round=args.per_round)
    result["inference"] = {c.name: dict(median_ms=_median_ms(c)) for c in lanes}
    result["eval_batch_size"] = lanes[0].exp.config.data.eval_batch_size
    for c in lanes:
        print(f"  inference {c.name:18s} {_median_ms(c):8.2f} ms", flush=True)
    with open(os.path.join(args.out, "timing.json"), "w") as f:
        json.dump(result, f, indent=1)
