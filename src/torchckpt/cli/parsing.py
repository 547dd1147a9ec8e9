"""Parsing command-line values: durations, storage options, version selectors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import click

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``6h``, ``7d``, ``1w``, ``1h30m`` or plain seconds -> ``timedelta``."""
    raw = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(raw):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
        pos = m.end()
    if not raw or pos != len(raw):
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 30m, 6h, 7d (or 1h30m)")
    return timedelta(seconds=total)


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> nested options; dotted keys nest, values are JSON when they parse."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(
                f"bad storage option {pair!r}: use KEY=VALUE, e.g. client_kwargs.endpoint_url=http://host:9000"
            )
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = options
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"storage option {key!r} conflicts with {part}={child!r}")
            node = child
        node[parts[-1]] = value
    return options


def parse_selector(text: str) -> str | int:
    """A VERSION argument: ``latest``, ``best``, a step number or a version id."""
    return int(text) if text.isdigit() else text


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()
