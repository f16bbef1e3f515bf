"""XLA CPU flag sweep: how much each ``XLA_FLAGS`` setting speeds up (or slows down) mtljax's ViT train
step and XLA's square matmuls, against the default flags, on one case.

XLA reads ``XLA_FLAGS`` once, when JAX initialises, so each setting runs in its own subprocess
(``xla_flags.py --serve``) that compiles the steps of one case (``--flag-case``; the mtljax contender
of ``vit_case.py``, each dtype of ``--flag-dtypes``) and the XLA matmuls of ``matmul_peak.py``, then
waits for orders on stdin. One default-flags subprocess lives through the whole sweep; each setting's
subprocess alternates with it ``--flag-reps`` times (each time: one untimed and ``--worker-calls``
timed calls of every contender, the other process idle). A setting's speed-up is the median over
alternations of (default time ÷ setting time). The pseudo-flag ``--cpus=0`` pins the subprocess to
one core with ``taskset`` (XLA sizes its thread pool by the cores it may use): XLA's counterpart of
``torch.set_num_threads(1)``. ``--flags`` takes ``;``-separated ``NAME=XLA_FLAGS`` settings.

  .venv-bench/bin/python benchmarks/xla_flags.py --quick      # tiny ViT, one setting (fast math), ~1 min
  .venv-bench/bin/python benchmarks/xla_flags.py --json benchmarks/results/train_step_sweep.json   # the full sweep

(torch is not needed: ``.venv/bin/python`` works as well.) ``train_step.py`` runs the same sweep after
its comparison unless given ``--no-sweep``, with the same ``--flags``/``--flag-*`` options.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import environment  # noqa: E402

DEFAULT_FLAGS = (
    "ynn_off=--xla_cpu_experimental_ynn_fusion_type=;"
    "xnnpack=--xla_cpu_use_xnnpack=true;"
    "onednn=--xla_cpu_use_onednn=true;"
    "fast_math=--xla_cpu_enable_fast_math=true;"
    "eigen_1thread=--xla_cpu_multi_thread_eigen=false;"
    "concurrency_sched=--xla_cpu_enable_concurrency_optimized_scheduler=true;"
    "one_core=--cpus=0"
)
QUICK_FLAGS = "fast_math=--xla_cpu_enable_fast_math=true"


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    """The sweep's own options (shared with ``train_step.py``)."""
    p.add_argument("--flags", default=None, help="';'-separated NAME=XLA_FLAGS settings to compare with the "
                   "default (default: seven settings; quick: fast math only)")
    p.add_argument("--flag-case", default=None, help="the case the sweep compiles (default Ti:16x16x1:p4; "
                   "quick tiny:16x16x1:p4)")
    p.add_argument("--flag-dtypes", default=None, help="default float32,bfloat16; quick float32")
    p.add_argument("--flag-reps", type=int, default=None, help="alternations per setting (default 6; quick 2)")
    p.add_argument("--worker-calls", type=int, default=None, help="timed calls per contender and sweep round "
                   "(default 2; quick 1)")


def add_case_args(p: argparse.ArgumentParser) -> None:
    """Options the sweep shares with the step comparison (batch, heads, matmul size, pause)."""
    p.add_argument("--batch", type=int, default=None, help="examples per step (default 64; quick 16)")
    p.add_argument("--classes", default="10,10,19", help="classes of each task head (3 tasks by default)")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size (default 2048; quick 512)")
    p.add_argument("--peak-max-s", type=float, default=1.0, help="halve the matmul size until a call takes this long")
    p.add_argument("--pause", type=float, default=0.05)


def resolve_defaults(args) -> None:
    """Fill the ``None`` options of :func:`add_case_args` and :func:`add_sweep_args` (``--quick`` aware)."""
    q = getattr(args, "quick", False)
    args.batch = args.batch or (16 if q else 64)
    args.peak_n = args.peak_n or (512 if q else 2048)
    args.flag_case = args.flag_case or ("tiny:16x16x1:p4" if q else "Ti:16x16x1:p4")
    args.flag_dtypes = args.flag_dtypes or ("float32" if q else "float32,bfloat16")
    args.worker_calls = args.worker_calls or (1 if q else 2)
    args.flags = args.flags if args.flags is not None else (QUICK_FLAGS if q else DEFAULT_FLAGS)
    args.flag_reps = args.flag_reps or (2 if q else 6)


def parse_settings(spec: str) -> list[tuple[str, str]]:
    out = []
    for item in (s.strip() for s in spec.split(";")):
        if not item:
            continue
        name, _, flags = item.partition("=")
        out.append((name.strip(), flags.strip()))
    return out


def serve(args) -> None:
    """A sweep worker: compile one case under this process's ``XLA_FLAGS``, then answer ``run K`` lines on
    stdin with the times of K calls of every contender (``TIMES {json}`` on stdout) until ``quit``."""
    from matmul_peak import xla_matmul
    from vit_case import Case, mtljax_contender

    case = Case.parse(args.flag_case)
    classes = [int(s) for s in args.classes.split(",")]
    cs = [mtljax_contender(case, d, args.batch, classes)[0] for d in args.flag_dtypes.split(",")]
    cs += [xla_matmul(d, args.peak_n, args.peak_max_s) for d in ("float32", "bfloat16")]
    for c in cs:
        c.run()
    info = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "cpus": sorted(os.sched_getaffinity(0)),
            "compile_s": {c.name: c.info["compile_s"] for c in cs if "compile_s" in c.info},
            "matmul_n": {c.name: c.info["n"] for c in cs if "n" in c.info},
            "flops": {c.name: c.flops for c in cs if "matmul" in c.framework}}
    print("READY " + json.dumps(info), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        k = int(cmd[1])
        times = {}
        for c in cs:
            c.run()  # untimed: this process was idle while the other one ran
            ts = []
            for _ in range(k):
                t0 = time.perf_counter()
                c.run()
                ts.append(time.perf_counter() - t0)
            times[c.name] = ts
        print("TIMES " + json.dumps(times), flush=True)


class Worker:
    """A ``serve`` subprocess for one setting. ``--cpus=LIST`` in ``flags`` is not an XLA flag: the
    process is pinned to those cores with ``taskset`` (XLA sizes its thread pool by the usable cores)."""

    def __init__(self, args, name: str, flags: str):
        self.name, self.flags = name, flags
        words = flags.split()
        cpus = [w.split("=", 1)[1] for w in words if w.startswith("--cpus=")]
        env = dict(os.environ)
        env["XLA_FLAGS"] = " ".join(w for w in words if not w.startswith("--cpus="))
        cmd = (["taskset", "-c", cpus[-1]] if cpus else []) + [
            sys.executable, os.path.abspath(__file__), "--serve", f"--flag-case={args.flag_case}",
            f"--flag-dtypes={args.flag_dtypes}", f"--batch={args.batch}", f"--classes={args.classes}",
            f"--peak-n={args.peak_n}", f"--peak-max-s={args.peak_max_s}"]
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and block the worker
        self.p = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.stderr, text=True, bufsize=1)
        self.info = self._expect("READY ")

    def _expect(self, tag: str):
        for line in self.p.stdout:
            if line.startswith(tag):
                return json.loads(line[len(tag):])
        self.p.wait()
        self.stderr.seek(0)
        err = [ln for ln in self.stderr.read().strip().splitlines() if ln.strip()]
        raise RuntimeError(f"exit {self.p.returncode}: {(err or ['no output'])[-1][:300]}")

    def run(self, k: int) -> dict:
        self.p.stdin.write(f"run {k}\n")
        self.p.stdin.flush()
        return self._expect("TIMES ")

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
            self.p.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()
        self.stderr.close()


def flag_sweep(args, log=print) -> dict:
    """Each setting's worker alternates with one long-lived default worker, ``--flag-reps`` times."""
    settings = parse_settings(args.flags)
    t0 = time.perf_counter()
    base = Worker(args, "default", "")
    log(f"    default worker ready in {time.perf_counter() - t0:.0f} s", flush=True)
    out = {"default_info": base.info, "settings": []}
    try:
        for name, flags in settings:
            t0 = time.perf_counter()
            entry = {"name": name, "xla_flags": flags, "rounds": []}
            out["settings"].append(entry)
            try:
                w = Worker(args, name, flags)
            except RuntimeError as e:
                entry["error"] = str(e)
                log(f"    {name:<18} failed: {e}", flush=True)
                continue
            entry["info"] = w.info
            try:
                for r in range(args.flag_reps):
                    pair = (base, w) if r % 2 == 0 else (w, base)
                    res = {}
                    for x in pair:
                        time.sleep(args.pause)
                        res[x.name if x is w else "default"] = x.run(args.worker_calls)
                    entry["rounds"].append(res)
            finally:
                w.close()
            log(f"    {name:<18} {time.perf_counter() - t0:5.0f} s  " + sweep_brief(entry), flush=True)
    finally:
        base.close()
    return out


def sweep_ratios(entry: dict, key: str) -> list[float]:
    """Per round: (default's median time) / (setting's median time) — the setting's speed-up."""
    out = []
    for res in entry["rounds"]:
        mine = res.get(entry["name"], {}).get(key)
        ref = res.get("default", {}).get(key)
        if mine and ref:
            out.append(statistics.median(ref) / statistics.median(mine))
    return out


def sweep_brief(entry: dict) -> str:
    parts = []
    for key in entry["rounds"][0].get("default", {}) if entry["rounds"] else []:
        rs = sweep_ratios(entry, key)
        if rs:
            parts.append(f"{key} x{statistics.median(rs):.2f}")
    return ", ".join(parts)


def sweep_table(sweep: dict, dtypes: list[str]) -> str:
    head = ["setting", "XLA_FLAGS"]
    for d in dtypes:
        head += [f"step ms {d} (default → setting)", f"speed-up {d} (min–max)"]
    head += ["matmul f32 speed-up", "matmul bf16 speed-up", "compile s (default → setting)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    dcomp = sweep["default_info"]["compile_s"]
    for e in sweep["settings"]:
        if "error" in e:
            lines.append(f"| {e['name']} | `{e['xla_flags']}` | failed: {e['error']} |")
            continue
        cells = [e["name"], f"`{e['xla_flags']}`"]
        for d in dtypes:
            key = f"mtljax/{d}"
            mine = [t for res in e["rounds"] for t in res[e["name"]].get(key, [])]
            ref = [t for res in e["rounds"] for t in res["default"].get(key, [])]
            rs = sweep_ratios(e, key)
            cells.append(f"{1e3 * statistics.median(ref):.0f} → {1e3 * statistics.median(mine):.0f}" if mine else "–")
            cells.append(f"{statistics.median(rs):.2f} ({min(rs):.2f}–{max(rs):.2f})" if rs else "–")
        for mm in ("xla-matmul/float32", "xla-matmul/bfloat16"):
            rs = sweep_ratios(e, mm)
            cells.append(f"{statistics.median(rs):.2f}" if rs else "–")
        comp = e["info"]["compile_s"]
        cells.append(" / ".join(f"{dcomp[k]:.0f} → {comp[k]:.0f}" for k in comp if k in dcomp))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_sweep(args, log=print) -> dict:
    """Announce, run and print the sweep (as ``train_step.py`` does after its comparison)."""
    from vit_case import Case

    log(f"\n== XLA flag sweep on {Case.parse(args.flag_case).label}, dtypes {args.flag_dtypes}: one "
        f"subprocess per setting, alternating with a default subprocess {args.flag_reps} times "
        f"({args.worker_calls} timed calls each)", flush=True)
    sweep = flag_sweep(args, log=log)
    log("\n### XLA CPU flags (speed-up = default time ÷ setting time, median over alternations)\n")
    log(sweep_table(sweep, args.flag_dtypes.split(",")))
    return sweep


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny ViT, batch 16, f32, one setting, 2 alternations")
    add_case_args(p)
    add_sweep_args(p)
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # internal: one setting's worker
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    resolve_defaults(args)
    if args.serve:
        serve(args)
        return
    env = environment()
    cmd = "python benchmarks/xla_flags.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print("# XLA flag sweep")
    print(json.dumps(env))
    print(f"command: {cmd.strip()}")
    print(f"HPS ViT (pool gap, linear heads {args.classes}), batch {args.batch}, Adam 1e-3, equal weighting")
    t_all = time.perf_counter()
    sweep = run_sweep(args)
    print(f"\ntotal wall time {time.perf_counter() - t_all:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"env": env, "command": cmd, "cases": [], "sweep": sweep, "notes": []}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
