"""The ``mtljax`` command.

    mtljax train [--config=configs/x.py[:arg]] [--config.train.steps=200 ...] [--workdir=DIR]
    mtljax eval  [--config=...] [--workdir=DIR]      # evaluate the newest checkpoint of a run
    mtljax compare [--config=...] --methods=equal,pcgrad,upgrad@rep,... [--seeds=3] [--outdir=DIR]
    mtljax routing [--config=...] --workdir=RUN [--outdir=DIR] [--max_examples=512]   # MoE usage heatmaps
    mtljax slim  [--config=...] --budget=50% [--preference=1,0.5] [--export_dir=DIR]   # slim models (config.model.name='slim')
    mtljax slim  [--config=...] --widths=encoder=0.5,left=1,right=0.25 [--export_dir=DIR]
    mtljax slim  [--config=...] --sweep [--num_budgets=8] [--num_preferences=32]
    mtljax merge --pretrained=RUN --experts=RUN,RUN,... --method=ties [--multitask=RUN] [--sweep] --workdir=DIR
    mtljax launch --local=2 [--cpu_devices=4] train ...   # several processes (also --slurm, --k8s, --tpu, --xpk)

``eval``, ``routing`` and ``slim`` given ``--workdir`` but no ``--config`` read the run's saved
``config.json``.

Configuration mistakes end with one line ``error: config.<key>: ...`` and exit status 2, before
anything is compiled or written; a non-finite loss ends with exit status 1 and keeps the last good
checkpoint.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

COMMANDS = ("train", "eval", "compare", "routing", "slim", "merge", "launch")
SAVED_CONFIG_COMMANDS = ("eval", "routing", "slim")


def default_config_path() -> str:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(here, "configs", "default.py")
    return path if os.path.exists(path) else os.path.join("configs", "default.py")


def _define(values: flags.FlagValues) -> None:
    """Every flag of every command."""
    config_flags.DEFINE_config_file("config", default_config_path(), "Experiment config file[:arg].",
                                    flag_values=values, lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (overrides config.workdir).", flag_values=values)
    flags.DEFINE_string("methods", "equal", "compare: comma-separated method specs name[@level][+flat], or 'all'.",
                        flag_values=values)
    flags.DEFINE_integer("seeds", 3, "compare: number of seeds.", flag_values=values)
    flags.DEFINE_string("outdir", None, "compare / routing: output directory (default <workdir>/compare, "
                        "<workdir>/routing).", flag_values=values)
    flags.DEFINE_integer("max_examples", 512, "routing: test examples to route.", flag_values=values)
    flags.DEFINE_string("budget", None, "slim: compute budget, '50%' of full FLOPs or FLOPs per example.",
                        flag_values=values)
    flags.DEFINE_string("preference", None, "slim: task preference, one number >= 0 per task, comma-separated.",
                        flag_values=values)
    flags.DEFINE_string("export_dir", None, "slim: where to write the sub-network.", flag_values=values)
    flags.DEFINE_string("widths", None, "slim: export this configuration: '0.5' or 'encoder=0.5,<task>=1,...'.",
                        flag_values=values)
    flags.DEFINE_boolean("sweep", False, "slim: evaluate controllability and hypervolume over budgets; "
                         "merge: run every merging method.", flag_values=values)
    flags.DEFINE_string("pretrained", None, "merge: the pretrained run the experts were fine-tuned from.",
                        flag_values=values)
    flags.DEFINE_string("experts", None, "merge: comma-separated expert run directories.", flag_values=values)
    flags.DEFINE_string("method", None, "merge: the merging method (mtljax.commands.merge.METHODS).",
                        flag_values=values)
    flags.DEFINE_string("multitask", None, "merge: a multi-task run to compare with.", flag_values=values)
    flags.DEFINE_integer("num_budgets", 8, "slim --sweep: number of budgets.", flag_values=values)
    flags.DEFINE_integer("num_preferences", 32, "slim --sweep: sampled preferences per budget.",
                         flag_values=values)


def _parse(argv: list[str]) -> flags.FlagValues:
    """Flags of one invocation (config_flags reads the overrides from ``sys.argv`` when defined)."""
    values = flags.FlagValues()
    saved, sys.argv = sys.argv, argv
    try:
        _define(values)
        values(argv)
        try:
            values.config.get("workdir")  # loads the file and applies the overrides
        except OSError as e:
            detail = str(e).strip().splitlines()[-1].strip()
            raise ValueError(f"--config={values['config'].config_filename}: cannot load the config ({detail})") from None
    finally:
        sys.argv = saved
    return values


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).replace("\\n", " ").replace("\\", "").split())
    if isinstance(e, (KeyError, AttributeError)):
        return "unknown config key: " + text.replace("'", "")
    return text.strip("'\"") or type(e).__name__


def _usage() -> str:
    return "usage: mtljax {" + ",".join(COMMANDS) + "} [--config=FILE[:ARG]] [--config.KEY=VALUE ...] [--workdir=DIR]"


def _command_help(command: str) -> str:
    """``mtljax <command> --help``: the usage, what the command does (its module's docstring) and the
    flags it reads."""
    import importlib

    module = {"merge": "mtljax.commands.merge", "slim": "mtljax.commands.slim", "routing": "mtljax.commands.routing",
              "compare": "mtljax.commands.compare"}.get(command)
    text = importlib.import_module(module).__doc__ if module else __doc__
    values = flags.FlagValues()
    _define(values)
    import re

    mine = [f for f in values if f in ("config", "workdir") or re.search(rf"\b{command}\b", values[f].help)]
    lines = [f"  --{f}: {values[f].help}" for f in mine]
    if command == "merge":
        from mtljax.config import base_config

        lines += [f"  --config.merge.{k}={v!r}" for k, v in base_config().merge.items()]
    return "\n".join([_usage(), "", text.strip(), "", f"flags of {command}:"] + lines +
                      ["  --config.KEY=VALUE: any key of the config (see mtljax/config.py)"])


def _with_saved_config(command: str, args: list[str]) -> list[str]:
    """``args`` with ``--config=<saved_config.py>:<workdir>/config.json`` added when ``command`` reads a
    run and no ``--config`` is given but ``--workdir`` holds a ``config.json``."""
    if command not in SAVED_CONFIG_COMMANDS or any(a == "--config" or a.startswith("--config=") for a in args):
        return args
    workdir = next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")), None)
    if workdir is None and "--workdir" in args[:-1]:
        workdir = args[args.index("--workdir") + 1]
    saved = os.path.join(workdir, "config.json") if workdir else ""
    if not saved or not os.path.isfile(saved):
        return args
    loader = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_config.py")
    return [f"--config={loader}:{os.path.abspath(saved)}"] + args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help") or argv[1] not in COMMANDS:
        print(_usage(), file=sys.stderr)
        return 0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2
    command = argv[1]
    if command == "launch":  # its own options, then an mtljax command passed on unchanged
        from mtljax.commands import launch

        if argv[2:3] in (["-h"], ["--help"]):
            print(launch.help_text())
            return 0
        return launch.main(argv[2:], COMMANDS)
    if any(a in ("-h", "--help") for a in argv[2:]):
        print(_command_help(command))
        return 0
    rest = _with_saved_config(command, argv[2:])
    try:
        parsed = _parse(argv[:1] + rest)
        config = parsed.config
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2

    from mtljax.commands.train import evaluate, train
    from mtljax.config import ConfigError
    from mtljax.trainer.loop import NonFiniteLossError
    from mtljax.trainer.preemption import Preempted

    if parsed.workdir:
        with config.unlocked():
            config.workdir = parsed.workdir
    try:
        if command == "train":
            train(config)
        elif command == "eval":
            evaluate(config)
        elif command == "routing":
            from mtljax.commands.routing import routing_report

            routing_report(config, parsed.outdir, max_examples=parsed.max_examples)
        elif command == "slim":
            from mtljax.commands.slim import run_slim

            run_slim(config, budget=parsed.budget, preference=parsed.preference, export_dir=parsed.export_dir,
                     do_sweep=parsed.sweep, num_budgets=parsed.num_budgets, num_preferences=parsed.num_preferences,
                     widths=parsed.widths)
        elif command == "merge":
            from mtljax.commands.merge import run_merge
            from mtljax.merge import MergeError

            try:
                run_merge(config, pretrained=parsed.pretrained, experts=parsed.experts, method=parsed.method,
                          multitask=parsed.multitask, sweep=parsed.sweep)
            except MergeError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        else:
            from mtljax.commands.compare import compare, parse_methods

            outdir = parsed.outdir or os.path.join(config.workdir, "compare")
            compare(config, parse_methods(parsed.methods), parsed.seeds, outdir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        print(e, flush=True)
        return 0
    except Exception as e:  # in a multi-process run, a collective that failed because a peer died
        import jax

        if jax.distributed.is_initialized() and isinstance(e, jax.errors.JaxRuntimeError):
            from mtljax.parallel.distributed import explain_collective_failure

            explain_collective_failure(e)
        raise
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
