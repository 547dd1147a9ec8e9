"""What a committed version looks like to users: ``CheckpointInfo`` and ``Checkpoint``.

The same record is stored in ``meta.json`` (immutable) and, plus ``pinned`` and
``exports``, in the manifest, so listing never needs to read version data.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Mapping

from .errors import CheckpointError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def new_version_id(step: int, now: datetime | None = None) -> str:
    """A readable, URL-safe id that sorts by time; the suffix keeps writers apart."""
    now = now or datetime.now(timezone.utc)
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return f"{stamp}-step{step:06d}-{secrets.token_hex(3)}"


def check_version_id(version: str) -> str:
    """Reject ids that could escape the root or confuse a URL (``..``, ``/``, ...)."""
    if not isinstance(version, str) or not _ID_RE.match(version) or ".." in version:
        raise CheckpointError(
            f"invalid version id {version!r}: ids use only [A-Za-z0-9._-], "
            "start with a letter or digit and contain no '..'"
        )
    return version


_FILE_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,199}$")


def check_file_name(name: str) -> str:
    """A file named by a record lives directly in its version (or export) folder: no paths."""
    if not isinstance(name, str) or not _FILE_RE.match(name) or ".." in name or name == ".":
        raise CheckpointError(f"invalid file name {name!r} in a version record: only plain names are allowed")
    return name


def _parse_time(value: str) -> datetime:
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class CheckpointInfo:
    """One committed version, as listed in the manifest."""

    version: str
    step: int
    epoch: int | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    metrics: dict[str, float] = field(default_factory=dict, hash=False)
    tags: tuple[str, ...] = ()
    pinned: bool = False
    size_bytes: int = 0
    files: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, repr=False)
    format: str = "torch"
    url: str = ""
    objects: tuple[str, ...] = ()
    torch_version: str = ""
    exports: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False, repr=False)
    layout: str = "single"

    def to_record(self, *, with_index_fields: bool = True) -> dict[str, Any]:
        """JSON form; meta.json leaves out ``pinned``/``exports``/``url`` (they change)."""
        rec: dict[str, Any] = {
            "id": self.version,
            "step": self.step,
            "epoch": self.epoch,
            "created_at": self.created_at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
            "format": self.format,
            "layout": self.layout,
            "files": self.files,
            "size_bytes": self.size_bytes,
            "metrics": self.metrics,
            "tags": list(self.tags),
            "torch_version": self.torch_version,
            "objects": list(self.objects),
        }
        if with_index_fields:
            rec["pinned"] = self.pinned
            rec["exports"] = self.exports
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], url: str = "") -> "CheckpointInfo":
        try:
            return cls(
                version=check_version_id(rec["id"]),
                step=int(rec["step"]),
                epoch=None if rec.get("epoch") is None else int(rec["epoch"]),
                created_at=_parse_time(rec["created_at"]),
                metrics={str(k): v for k, v in dict(rec.get("metrics") or {}).items()},
                tags=tuple(rec.get("tags") or ()),
                pinned=bool(rec.get("pinned", False)),
                size_bytes=int(rec.get("size_bytes", 0)),
                files={check_file_name(k): v for k, v in dict(rec.get("files") or {}).items()},
                format=str(rec.get("format", "torch")),
                url=url,
                objects=tuple(rec.get("objects") or ()),
                torch_version=str(rec.get("torch_version", "")),
                exports={check_file_name(k): v for k, v in dict(rec.get("exports") or {}).items()},
                layout=str(rec.get("layout", "single")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed version record {dict(rec)!r}: {exc}") from exc

    def with_(self, **changes: Any) -> "CheckpointInfo":
        return replace(self, **changes)


def new_version_info(
    version: str, *, files: dict[str, dict[str, Any]], url: str, created_at: datetime, **fields: Any
) -> CheckpointInfo:
    """The record of a version just written: its size is its files', its torch the running one."""
    import torch  # already loaded by whoever wrote the files

    return CheckpointInfo(
        version=version,
        created_at=created_at,
        size_bytes=sum(int(r["size"]) for r in files.values()),
        files=files,
        url=url,
        torch_version=torch.__version__,
        **fields,
    )


@dataclass
class Checkpoint:
    """What ``restore()`` returns: the record plus everything not loaded in place."""

    info: CheckpointInfo
    state: dict[str, Any]
    extra: dict[str, Any]

    @property
    def step(self) -> int:
        return self.info.step

    @property
    def epoch(self) -> int | None:
        return self.info.epoch

    @property
    def metrics(self) -> dict[str, float]:
        return self.info.metrics
