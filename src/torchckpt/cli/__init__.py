"""The ``torchckpt`` command line (click): ``app`` holds the group and the error contract,
``commands`` the commands, ``parsing`` and ``output`` what goes in and out."""

from __future__ import annotations

from . import commands as _commands  # noqa: F401  (registers the commands on the group)
from . import moving as _moving  # noqa: F401  (copy, sync, demo)
from .app import cli, main
from .parsing import parse_duration, parse_selector, parse_storage_options

__all__ = ["cli", "main", "parse_duration", "parse_selector", "parse_storage_options"]
