"""Opening TensorFlow Datasets (tfds) splits as random-access sources, without TensorFlow.

``tfds.data_source`` reads a dataset that was prepared once (``tfds build NAME`` in the ``array_record``
format) and answers ``source[i]`` / ``source.__getitems__([i, ...])`` with numpy example dicts; no
TensorFlow is involved. We never let it download or prepare anything (``download=False``): runs must
not reach the network. When the data is missing, tfds raises one of several unrelated errors
(``KeyError`` on the split, ``NotImplementedError`` about file formats, ...); :func:`open_source` turns
that into :class:`DatasetNotPreparedError`, whose message is a single line that names the config key,
the data directory and the command that prepares the data.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from mtljax.config import ConfigError


class DatasetNotPreparedError(ConfigError):
    """A tfds dataset needed by the config is not available (prepared) in the data directory."""


def _data_dir(data_dir: str | None) -> str | None:
    return os.path.expanduser(data_dir) if data_dir else None


def open_source(config_name: str, tfds_name: str, split: str, data_dir: str | None):
    """``tfds.data_source(tfds_name, split=split, data_dir=data_dir)`` with a one-line error.

    ``config_name`` is the value of ``config.data.name`` that asked for the data; it is named in the
    error so the user knows which part of the config to change. An empty ``data_dir`` means tfds'
    default directory (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
    """
    import tensorflow_datasets as tfds

    data_dir = _data_dir(data_dir)
    try:
        return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises many types for "not there"; classified below
        cause = e
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir)
        prepared = builder.is_prepared()
        root = os.path.dirname(os.path.dirname(os.fspath(builder.data_dir)))
    except Exception:  # the builder itself could not be made: report as not prepared
        prepared, root = False, data_dir or "~/tensorflow_datasets"
    if not prepared:
        raise DatasetNotPreparedError(
            f"{config_name!r}: tfds dataset {tfds_name!r} is not prepared in {root}; "
            f"prepare it with 'tfds build {tfds_name} --data_dir={root} --file_format=array_record' "
            "(needs network and tensorflow once) or point --config.data.data_dir at a prepared copy", "name"
        ) from None
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    raise ConfigError(
        f"{config_name!r}: cannot open split {split!r} of tfds dataset {tfds_name!r} "
        f"in {root} for random access ({type(cause).__name__}: {first}); it must be prepared with "
        "--file_format=array_record", "name"
    ) from None


def read_examples(source, indices: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
    """Decoded examples ``source[i]`` for ``indices``, read in one call where the source allows it.

    tfds sources read a whole list of records at once through ``__getitems__``. Sources without it
    (plain sequences) are read one by one; so is tfds' own test mock, whose ``__getitems__`` cannot be
    called (a ``TypeError`` from a mis-bound method), which is why that case falls back too.
    """
    keys = [int(i) for i in np.asarray(indices).reshape(-1)]
    if not keys:
        return []
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:
            return list(getitems(keys))
        except TypeError:
            pass
    return [source[k] for k in keys]
