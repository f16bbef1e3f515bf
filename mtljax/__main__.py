"""``python -m mtljax ...`` is the ``mtljax`` command."""

from mtljax.commands.cli import run

run()
