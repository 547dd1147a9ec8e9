"""What commands print: JSON records, metric and time formats, the progress bar."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import timezone
from typing import Any

import click

from ..records import CheckpointInfo
from ..text import human_size, table

__all__ = ["Progress", "created", "emit_json", "fmt_metric", "human_size", "record", "table"]


def fmt_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def created(info: CheckpointInfo) -> str:
    return info.created_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def record(info: CheckpointInfo) -> dict[str, Any]:
    """The JSON form of a version for ``--json`` (the manifest record plus its URL)."""
    rec = info.to_record()
    rec["url"] = info.url
    rec["tiers"] = list(info.tiers)
    return rec


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


class Progress:
    """A tqdm byte bar on stderr, only on a terminal and without ``--quiet``/``--json``."""

    def __init__(self, total: int, *, quiet: bool) -> None:
        self.bar: Any = None
        if total and not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="copying", file=sys.stderr)

    def __enter__(self) -> Callable[[int], Any] | None:
        return self.bar.update if self.bar is not None else None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
