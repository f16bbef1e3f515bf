"""Orbax checkpoints of the train state and the data-iterator state, checksummed, and a restore that
never lets a corrupted checkpoint block or poison a run.

One ``ocp.CheckpointManager`` per run directory (``<workdir>/checkpoints``), asynchronous and keeping the
newest ``keep`` steps. A checkpoint holds two items: ``state`` (the sharded :class:`TrainState`, restored
straight onto the mesh with the shardings it is given) and ``data`` (the grain data iterator, written and
read by grain's own orbax handler, ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore``: one JSON
file of the iterator's position per process, ``data/process_<i>-of-<n>.json``, taken while ``save``
runs, so the iterator may advance as soon as ``save`` returns). Every process's position is the index
of the next global batch, so a checkpoint written by N processes resumes on M (:func:`iterator_position`),
and the state's arrays are restored onto whatever mesh the shardings given describe (resharding).

Orbax writes a step to a temporary directory and renames it when complete, so a process killed while
saving leaves the previous checkpoints intact and the partial one ignored.

**Checksums.** Once a step is complete (orbax saves asynchronously: at the next ``save``, at ``wait``
or ``close``), process 0 writes ``<step>/checksums.json``: the size and CRC-32 of every file in the step
directory (all processes' files: the directory is shared). Orbax ignores the extra file, and deletes it
with its step when it drops old ones. Checksumming reads the step back once (from the page cache,
usually): about 0.1 s per 100 MB.

**Restoring the newest good step** (:meth:`Checkpointer.restore_newest_good`, used by ``fit`` to resume
and by ``restore_params`` for eval, slim, routing, merge). Steps are tried newest first. A step is
*unusable* when its files do not match its ``checksums.json`` (a missing, truncated or altered file),
when orbax or grain fail to load it (any exception: missing metadata, a truncated array file, a broken
iterator JSON), or when its restored train state holds a NaN or inf in any floating-point array (a step
without ``checksums.json``, e.g. killed right after orbax finished it, is accepted if it loads and is
finite). Each unusable step is reported in one warning line naming the step and the reason, moved to
``<workdir>/checkpoints_unusable/<step>`` (never deleted; orbax no longer sees it, so the same step
number can be saved again), and the previous step is tried. Orbax's own log output is silenced while a
step is tried, so the user sees the one line, not a traceback.

When checkpoints existed but none is usable, ``fit`` warns (one line per step, ending "starting from
step 0") and trains from scratch: the unusable steps stay in ``checkpoints_unusable`` for inspection,
so nothing is lost, and a long run is not blocked on a manual clean-up. ``restore_params`` has nothing
to evaluate then and raises a one-line :class:`~mtljax.config.ConfigError`.

Multi-process: verification reads the shared directory, so every process reaches the same verdict; a
load failure on any process makes the step unusable on all (their verdicts are gathered); the
finiteness check is one global reduction. Only process 0 writes manifests and moves steps aside,
between barriers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import zlib
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

MANIFEST = "checksums.json"
UNUSABLE = "_unusable"  # suffix of the folder beside the checkpoints that holds the unusable steps
_CHUNK = 1 << 20


def _stderr(line: str):
    print(line, file=sys.stderr, flush=True)


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _files(step_dir: str) -> list[str]:
    out = []
    for root, dirs, names in os.walk(step_dir):
        dirs.sort()
        out += [os.path.relpath(os.path.join(root, n), step_dir) for n in sorted(names)]
    return [p for p in out if p != MANIFEST and not p.startswith(MANIFEST + ".")]


def write_json(path: str, obj, **dump_kwargs):
    """``json.dump`` to ``path`` whole or not at all (a temporary file moved into place): a reader never
    sees half a file, and a kill mid-write leaves the previous one."""
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, **dump_kwargs)
    os.replace(path + ".tmp", path)


def write_manifest(step_dir: str):
    """``<step_dir>/checksums.json``: ``{"crc32": {relative path: [size, crc32]}}`` of every file."""
    files = {rel: [os.path.getsize(os.path.join(step_dir, rel)), _crc32(os.path.join(step_dir, rel))]
             for rel in _files(step_dir)}
    write_json(os.path.join(step_dir, MANIFEST), {"crc32": files})


def verify_manifest(step_dir: str) -> str | None:
    """Why the files of ``step_dir`` do not match its ``checksums.json``, or ``None`` when they do (or
    when it has none)."""
    path = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            files = json.load(f)["crc32"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"unreadable {MANIFEST}"
    for rel, (size, crc) in sorted(files.items()):
        full = os.path.join(step_dir, rel)
        if not os.path.isfile(full):
            return f"missing {rel}"
        actual = os.path.getsize(full)
        if actual != size:
            return f"{rel} is {actual} bytes, {size} were written"
        if _crc32(full) != crc:
            return f"checksum mismatch in {rel}"
    return None


def _describe(e: BaseException) -> str:
    """A short one-line reason for a load failure (tensorstore's messages carry a long spec)."""
    text = " ".join(str(e).split("[tensorstore_spec")[0].split())
    if len(text) > 160:
        text = "..." + text[-157:]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet():
    """Orbax's (absl) log output off while a possibly corrupted step is read: its failure is reported in
    one line by the caller."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _finite_flags(xs):
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])


class _FailedReadNote(logging.Filter):
    """Drops asyncio's "exception was never retrieved" reports of the reads of a step that failed."""

    def filter(self, record):
        return not ("exception was never retrieved" in record.getMessage() and
                    "tensorstore_spec" in str(record.exc_info[1] if record.exc_info else record.args))


_hushed = False


def _hush_late_noise():
    """Installed before a step is read. After a failed read, orbax's event loop is closed while
    tensorstore still completes the step's other reads; each then reports ``RuntimeError: Event loop is
    closed`` (through ``sys.unraisablehook``) or an unretrieved exception (asyncio's logger), possibly at
    exit. Those reports, and only those, are dropped from then on; the failure is reported in one line."""
    global _hushed
    if _hushed:
        return
    _hushed, previous = True, sys.unraisablehook

    def hook(unraisable):
        e = unraisable.exc_value
        if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_FailedReadNote())


def _non_finite(tree) -> str | None:
    """The path of the first floating-point array of ``tree`` holding a NaN or inf, or ``None``."""
    flat = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    if not flat:
        return None
    sharding = getattr(flat[0][1], "sharding", None)
    out = (jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
           if isinstance(sharding, jax.sharding.NamedSharding) else None)
    flags = jax.jit(_finite_flags, out_shardings=out)([x for _, x in flat])
    flags = np.asarray(flags.addressable_data(0)) if isinstance(flags, jax.Array) else np.asarray(flags)
    bad = [name for (name, _), ok in zip(flat, flags) if not ok]
    return bad[0] if bad else None


def _barrier(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def _any_process(failed: bool) -> bool:
    if jax.process_count() == 1:
        return failed
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.asarray(failed, np.int32))))


def _iterator_file(index: int | None = None, count: int | None = None) -> str:
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return f"process_{index}-of-{count}.json"


def iterator_position(data_dir: str) -> dict:
    """The data-iterator state saved by processes of another count, for this process.

    Each process's training iterator walks its rows of the same global batches (``next_index`` is the
    next global batch), so the saved states agree and hold for any number of processes; they are checked
    to agree. Raises ValueError when there is none, or they differ.
    """
    names = sorted(n for n in os.listdir(data_dir) if n.startswith("process_") and n.endswith(".json"))
    if not names:
        raise ValueError(f"no data-iterator state in {data_dir}")
    states = []
    for n in names:
        with open(os.path.join(data_dir, n)) as f:
            states.append(json.load(f))
    if any(s != states[0] for s in states):
        raise ValueError(f"the {len(names)} processes' data-iterator states in {data_dir} differ; it cannot be "
                         f"resumed with {jax.process_count()} processes")
    return states[0]


class Checkpointer:
    def __init__(self, directory: str, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
        self._unsealed: list[int] = []  # saved steps whose checksums are not written yet
        self.unusable: list[tuple[int, str, str]] = []  # (step, reason, where it was moved)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state, iterator: grain.DatasetIterator, *, force: bool = False) -> bool:
        """Save ``state`` and the position of ``iterator`` as step ``step`` (asynchronously)."""
        self.manager.wait_until_finished()  # orbax waits for the previous save here anyway
        self._seal()
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    data=grain.checkpoint.CheckpointSave(iterator)),
            force=force,
        )
        if saved:
            self._unsealed.append(step)
        return saved

    def _seal(self):
        """Checksums of the completed steps saved since the last call (process 0 writes them)."""
        steps, self._unsealed = self._unsealed, []
        if jax.process_index() != 0:
            return
        for step in steps:
            d = self.step_dir(step)
            if os.path.isdir(d) and not os.path.exists(os.path.join(d, MANIFEST)):
                write_manifest(d)

    def restore(self, step: int, abstract_state, iterator: grain.DatasetIterator | None = None):
        """The train state of ``step``, its arrays placed with the shardings in ``abstract_state``.

        Given ``iterator``, also moves it to the position saved with that step.
        """
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        position = None
        if iterator is not None:
            data = os.path.join(self.step_dir(step), "data")
            if "://" in self.directory or os.path.exists(os.path.join(data, _iterator_file())):
                items["data"] = grain.checkpoint.CheckpointRestore(iterator)
            else:  # written by another number of processes
                position = iterator_position(data)
        state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        if position is not None:
            iterator.set_state(position)
        return state

    def check(self, step: int, abstract_state, iterator: grain.DatasetIterator | None = None):
        """``(state, None)`` when ``step`` verifies, loads and is finite, else ``(None, reason)``."""
        reason, state = verify_manifest(self.step_dir(step)), None
        if reason is None:
            _hush_late_noise()
            try:
                with _quiet():
                    state = self.restore(step, abstract_state, iterator)
            except Exception as e:  # noqa: BLE001 - whatever orbax, grain or tensorstore raise
                reason = _describe(e)
        if _any_process(reason is not None):
            return None, reason or "failed to load on another process"
        bad = _non_finite(state)
        return (None, f"non-finite values in {bad}") if bad else (state, None)

    def restore_newest_good(self, abstract_state, iterator: grain.DatasetIterator | None = None,
                            log: Callable[[str], None] = _stderr, *, then: str = "resuming from step {}",
                            otherwise: str = "starting from step 0"):
        """``(step, state)`` of the newest usable step (see the module docstring), or ``(None, None)``.

        Unusable steps are moved aside and listed in ``self.unusable``; each gets one warning line through
        ``log``, ending with ``then`` (formatted with the step used) or ``otherwise`` when none is usable.
        Given ``iterator``, it is left at the position saved with the step used (unchanged if none).
        """
        self.unusable = []
        initial = iterator.get_state() if iterator is not None else None
        found = (None, None)
        for step in sorted(self.manager.all_steps(), reverse=True):
            state, reason = self.check(step, abstract_state, iterator)
            if reason is None:
                found = (step, state)
                break
            if iterator is not None:
                iterator.set_state(initial)
            self.unusable.append((step, reason, self._move_aside(step)))
        if self.unusable:
            self.manager.reload()
            tail = then.format(found[0]) if found[0] is not None else otherwise
            for step, reason, dest in self.unusable:
                log(f"warning: checkpoint step {step} in {self.directory} is unusable ({reason}); "
                    f"moved to {dest}; {tail}")
        return found

    def _move_aside(self, step: int) -> str:
        """Move step ``step`` to ``<directory>_unusable/<step>`` (``<step>.2``, ... if taken)."""
        base = self.directory + UNUSABLE
        dest, n = os.path.join(base, str(step)), 1
        while os.path.exists(dest):
            n += 1
            dest = os.path.join(base, f"{step}.{n}")
        _barrier(f"mtljax_unusable_{step}_a")
        if jax.process_index() == 0:
            os.makedirs(base, exist_ok=True)
            os.rename(self.step_dir(step), dest)
        _barrier(f"mtljax_unusable_{step}_b")
        return dest

    def wait(self):
        self.manager.wait_until_finished()
        self._seal()

    def close(self):
        self.wait()
        self.manager.close()
