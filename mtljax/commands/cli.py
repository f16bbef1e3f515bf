"""The ``mtljax`` command.

    mtljax train [--config=configs/x.py[:arg]] [--config.train.steps=200 ...] [--workdir=DIR]
    mtljax train --config=... --config.init.checkpoint=RUN --config.data.tasks=+new[,+other]   # add tasks to RUN's
    mtljax eval  [--config=...] [--workdir=DIR]      # evaluate the newest checkpoint of a run
    mtljax compare [--config=...] --methods=equal,pcgrad,upgrad@rep,... [--seeds=3] [--outdir=DIR]
    mtljax routing [--config=...] --workdir=RUN [--outdir=DIR] [--max_examples=512]   # MoE usage heatmaps
    mtljax slim  [--config=...] --budget=50% [--preference=1,0.5] [--export_dir=DIR]   # slim models (config.model.name='slim')
    mtljax slim  [--config=...] --widths=encoder=0.5,left=1,right=0.25 [--export_dir=DIR]
    mtljax slim  [--config=...] --sweep [--num_budgets=8] [--num_preferences=32]
    mtljax merge --pretrained=RUN --experts=RUN,RUN,... --method=ties [--multitask=RUN] [--sweep] --workdir=DIR
    mtljax launch --local=2 [--cpu_devices=4] train ...   # several processes (also --slurm, --k8s, --tpu, --xpk)

``eval``, ``routing`` and ``slim`` given ``--workdir`` but no ``--config`` read the run's saved
``config.json``. The free-form config sections (``mtljax.config.FREE_FORM_KEYS``) take new keys:
``--config.optim.method_kwargs.c=0.4`` (the value read as a Python literal, else as a string).

Configuration mistakes end with one line ``error: config.<key>: ...`` and exit status 2, before
anything is compiled or written (so do a mistyped command, a flag another command reads, and a stray
argument such as a config file given without ``--config=``); a non-finite loss ends with exit status
1 and keeps the last good checkpoint; SIGTERM saves a checkpoint and exits 0 (see mtljax.trainer.preemption).

A command is one entry of :data:`COMMANDS`: its name, the ``module:function`` that runs it (called
with the config and the parsed flags, returning the exit status) and a one-line description. Its
flags are those of :func:`_define` whose help begins with the command's name.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

# name -> ("module:function" that runs it, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("mtljax.commands.train:train_command", "train (or resume) the run of a config in its workdir"),
    "eval": ("mtljax.commands.train:eval_command", "evaluate the newest checkpoint of a run on the test split"),
    "compare": ("mtljax.commands.compare:compare_command",
                "train multi-task methods over seeds and compare them (mean, std, significance)"),
    "routing": ("mtljax.commands.routing:routing_command", "expert-usage heatmaps of a trained mixture-of-experts run"),
    "slim": ("mtljax.commands.slim:slim_command",
             "cut a trained slim model down to a compute budget and a task preference"),
    "merge": ("mtljax.commands.merge:merge_command", "merge task experts fine-tuned from one pretrained run"),
    "launch": ("mtljax.commands.launch:main", "run a command as several processes: here, SLURM, Kubernetes, TPU"),
}
SAVED_CONFIG_COMMANDS = ("eval", "routing", "slim")
COMMON_FLAGS = ("config", "workdir")
# config sections `mtljax <command> --help` lists with their defaults (default: HELP_SECTIONS)
HELP_SECTIONS = ("data", "model", "optim", "train", "mesh", "dist", "baselines", "init")
COMMAND_SECTIONS = {"merge": ("merge",), "eval": (), "routing": (), "slim": ("model.slim",)}


def default_config_path() -> str:
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(here, "configs", "default.py")
    return path if os.path.exists(path) else os.path.join("configs", "default.py")


def _define(values: flags.FlagValues) -> None:
    """Every flag of every command; a flag's help begins with the commands that read it."""
    config_flags.DEFINE_config_file("config", default_config_path(), "Experiment config file[:arg].",
                                    flag_values=values, lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory (overrides config.workdir).", flag_values=values)
    flags.DEFINE_string("methods", "equal", "compare: comma-separated method specs name[@level][+flat], or 'all'.",
                        flag_values=values)
    flags.DEFINE_integer("seeds", 3, "compare: number of seeds.", flag_values=values)
    flags.DEFINE_string("outdir", None, "compare / routing: output directory (default <workdir>/compare, "
                        "<workdir>/routing).", flag_values=values)
    flags.DEFINE_integer("max_examples", 512, "routing: test examples to route.", flag_values=values)
    flags.DEFINE_string("budget", None, "slim: compute budget, '50%' of full FLOPs (in (0, 100%]) or FLOPs per "
                        "example (at most the full network's).", flag_values=values)
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


def _command_flags(command: str, values: flags.FlagValues) -> list[str]:
    """The flags ``command`` reads: the common ones and those whose help names it before the first ':'
    or in a '<command>: ' clause."""
    named = re.compile(rf"(^|; )[\w /-]*\b{command}\b[\w /-]*:")
    return [f for f in values if f in COMMON_FLAGS or f.startswith("config.") or named.search(values[f].help)]


def _free_form(args: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """``args`` without the overrides of free-form sections, and those as ``(section, key, text)``
    (``key`` empty when the whole section is given: ``--config.optim.method_kwargs={'c': 0.4}``)."""
    from mtljax.config import FREE_FORM_KEYS

    rest, found, i = [], [], 0
    while i < len(args):
        a = args[i]
        name, eq, text = a.partition("=")
        section = next((s for s in FREE_FORM_KEYS if name == f"--config.{s}" or name.startswith(f"--config.{s}.")), None)
        if section is None:
            rest.append(a)
        else:
            if not eq:  # --config.optim.method_kwargs.c 0.4
                if i + 1 >= len(args):
                    raise ValueError(f"{name}: give a value ({name}=VALUE)")
                i, text = i + 1, args[i + 1]
            key = name[len(f"--config.{section}"):].lstrip(".")
            if "." in key:
                raise ValueError(f"config.{section}.{key}: the keys of config.{section} are single names")
            found.append((section, key, text))
        i += 1
    return rest, found


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _apply_free_form(config, found) -> None:
    with config.unlocked():
        for section, key, text in found:
            *parents, leaf = section.split(".")
            node = config
            for p in parents:
                node = node[p]
            value = _literal(text)
            if not key:
                if not isinstance(value, dict):
                    raise ValueError(f"config.{section}: give a dict such as {{'name': 1.0}}, got {text!r}")
                node[leaf] = value
                continue
            try:
                node[leaf][key] = value
            except TypeError as e:
                raise ValueError(f"config.{section}.{key}: {e}") from None


def _stray(arg: str) -> str:
    """The error line of a positional argument."""
    if arg.partition(":")[0].endswith(".py"):
        return f"unexpected argument {arg!r} (did you mean --config={arg}?)"
    if "=" in arg and not arg.startswith("-"):
        return f"unexpected argument {arg!r} (did you mean --config.{arg}?)"
    return f"unexpected argument {arg!r} (flags start with --; see mtljax --help)"


def _parse(argv: list[str]) -> flags.FlagValues:
    """Flags of one invocation (config_flags reads the overrides from ``sys.argv`` when defined)."""
    values = flags.FlagValues()
    argv, free = _free_form(list(argv))
    saved, sys.argv = sys.argv, argv
    try:
        _define(values)
        positional = values(argv)[1:]
        if positional:
            raise ValueError(_stray(positional[0]))
        try:
            values.config.get("workdir")  # loads the file and applies the overrides
        except OSError as e:
            detail = str(e).strip().splitlines()[-1].strip()
            raise ValueError(f"--config={values['config'].config_filename}: cannot load the config ({detail})") from None
        _apply_free_form(values.config, free)
    finally:
        sys.argv = saved
    return values


def _one_line(e: BaseException, args: list[str] = ()) -> str:
    """The error line of a failed parse; an unknown config key is named, quoted, with the override
    that used it."""
    text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
    while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # ml_collections repr()s its messages
        try:
            text = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            break
    lines = [" ".join(line.split()) for line in str(text).splitlines() if line.strip()]
    if lines and lines[0].endswith("Error whilst parsing config file:") and len(lines) > 1:
        # a config file's get_config raised: its own message (the traceback's last line), not the traceback
        flag = lines[0].partition(": Error whilst")[0].removeprefix("flag ")
        last = lines[-1]
        return f"{flag}: {last.partition(': ')[2] or last}"
    if isinstance(e, (KeyError, AttributeError)) and lines:
        bare = lines[0].strip("'\"")
        flag = next((a.partition("=")[0] for a in args if a.startswith("--config.")
                     and bare in a.partition("=")[0].split(".")), None)
        hint = " ".join(lines[1:])
        hint = f" ({hint[:1].lower()}{hint[1:].rstrip('.')})" if hint else ""
        where = flag.removeprefix("--") + ": " if flag else ""
        return f"{where}unknown config key {bare!r}{hint}"
    return " ".join(lines) or type(e).__name__


def _usage(command: str | None = None) -> str:
    name = command or "{" + ",".join(COMMANDS) + "}"
    return f"usage: mtljax {name} [--config=FILE[:ARG]] [--config.KEY=VALUE ...] [--workdir=DIR] [flags]"


def _help() -> str:
    """``mtljax --help``: the commands, one line each."""
    width = max(len(c) for c in COMMANDS)
    lines = [_usage(), "", "commands:"] + [f"  {c.ljust(width)}  {d}" for c, (_, d) in COMMANDS.items()]
    return "\n".join(lines + ["", "'mtljax <command> --help' lists a command's flags and its main config keys.",
                              ("A config mistake stops with one line 'error: config.<key>: ...' and exit status 2, "
                               "before anything is compiled or written.")])


def _config_keys(config, sections) -> list[str]:
    """``config.<section>.<key>=<value>`` of every scalar key of ``sections``; nested sections by name."""
    import ml_collections as mlc

    from mtljax.config import FREE_FORM_KEYS

    out = [f"config.{k}={config[k]!r}" for k in ("seed", "workdir") if k in config and "init" in sections]
    for section in sections:
        node = config
        for p in section.split("."):
            node = node[p] if node is not None and p in node else None
        if node is None:
            continue
        keys, nested = [], []
        for k, v in node.items():
            if f"{section}.{k}" in FREE_FORM_KEYS:
                keys.append(f"config.{section}.{k}.KEY=VALUE")
            elif isinstance(v, mlc.ConfigDict) and k != "shape":
                nested.append(k)
            else:
                keys.append(f"config.{section}.{k}={v.to_dict() if isinstance(v, mlc.ConfigDict) else v!r}")
        for key in keys:  # packed into lines of about 108 characters, no key split
            if out and out[-1].startswith(f"config.{section}.") and len(out[-1]) + 2 + len(key) <= 108:
                out[-1] += "  " + key
            else:
                out.append(key)
        if nested:
            out.append(f"config.{section}.{{{','.join(nested)}}}.*  (see mtljax/config.py)")
    return out


def _command_help(command: str, args: list[str] = ()) -> str:
    """``mtljax <command> --help``: usage, description, the module's docstring, its flags and the main
    config keys with their values (of ``--config`` when given, else the default config)."""
    entry, description = COMMANDS[command]
    doc = (importlib.import_module(entry.partition(":")[0]).__doc__ or "").strip()
    values = flags.FlagValues()
    _define(values)
    lines = [_usage(command), "", f"mtljax {command}: {description}.", "", doc, "", f"flags of {command}:"]
    lines += [f"  --{f}: {values[f].help}" for f in _command_flags(command, values)]
    sections = COMMAND_SECTIONS.get(command, HELP_SECTIONS)
    if sections:
        from mtljax.config import ConfigError, load_config

        spec = next((a.partition("=")[2] for a in args if a.startswith("--config=")), default_config_path())
        try:
            config = load_config(spec)
        except (ConfigError, OSError, ImportError, ValueError, AttributeError) as e:
            return "\n".join(lines + ["", f"(cannot list the config keys of --config={spec}: {_one_line(e)})"])
        lines += ["", (f"main config keys (values of {os.path.relpath(spec.partition(':')[0])}; "
                       "change any with --config.KEY=VALUE):")]
        lines += ["  " + line for line in _config_keys(config, sections)]
    return "\n".join(lines)


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


def _unknown_command(name: str) -> str:
    close = difflib.get_close_matches(name, COMMANDS, n=1)
    return f"error: unknown command {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2:
        print(_help(), file=sys.stderr)
        return 2
    if argv[1] in ("-h", "--help", "help"):
        print(_help())
        return 0
    command = argv[1]
    if command not in COMMANDS:
        print(_unknown_command(command) if not command.startswith("-") else
              f"error: give the command before the flags ({command!r})", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    if command == "launch":  # its own options, then an mtljax command passed on unchanged
        from mtljax.commands import launch

        if argv[2:3] in (["-h"], ["--help"]):
            print(launch.help_text())
            return 0
        return launch.main(argv[2:], tuple(COMMANDS))
    if any(a in ("-h", "--help", "--helpfull") for a in argv[2:]):
        print(_command_help(command, argv[2:]))
        return 0
    rest = _with_saved_config(command, argv[2:])
    try:
        parsed = _parse(argv[:1] + rest)
        config = parsed.config
        foreign = [f for f in parsed if parsed[f].present and f not in _command_flags(command, parsed)]
        if foreign:
            raise ValueError(f"--{foreign[0]} is not a flag of mtljax {command} (mtljax {command} --help lists them)")
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"error: {_one_line(e, rest)}", file=sys.stderr)
        return 2

    from mtljax.config import ConfigError
    from mtljax.trainer.loop import NonFiniteLossError
    from mtljax.trainer.preemption import Preempted

    if parsed.workdir:
        with config.unlocked():
            config.workdir = parsed.workdir
    module, _, function = COMMANDS[command][0].partition(":")
    try:
        return int(getattr(importlib.import_module(module), function)(config, parsed) or 0)
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


def run() -> None:
    try:
        sys.exit(main())
    except BrokenPipeError:  # `mtljax train --help | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    run()
