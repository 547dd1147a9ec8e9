"""What a committed version looks like to users: ``CheckpointInfo`` and ``Checkpoint``.

The same record is stored in ``meta.json`` (immutable) and, plus ``pinned`` and
``exports``, in the manifest, so listing never needs to read version data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from .errors import CheckpointError
from .layout import check_file_name, check_rel_path, check_version_id, check_version_name

#: ``CheckpointInfo.layout`` of a folder version (``save_files``): its files keep their relative paths.
FILES_LAYOUT = "files"


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
    name: str | None = None
    #: Where the version is now: ``"cache"`` and/or ``"root"`` (computed when listed; never stored).
    tiers: tuple[str, ...] = field(default=("root",), compare=False)

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
        if self.name is not None:  # absent from records of unnamed versions (and of older torchckpt)
            rec["name"] = self.name
        if with_index_fields:
            rec["pinned"] = self.pinned
            rec["exports"] = self.exports
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], url: str = "") -> CheckpointInfo:
        """Parse a manifest or ``meta.json`` record; every path and name in it is checked.

        Raises:
            CheckpointError: the record is malformed or names a path that could escape its version.
        """
        layout = str(rec.get("layout", "single"))
        check_path = check_rel_path if layout == FILES_LAYOUT else check_file_name
        try:
            name = rec.get("name")
            return cls(
                version=check_version_id(rec["id"]),
                step=int(rec["step"]),
                epoch=None if rec.get("epoch") is None else int(rec["epoch"]),
                created_at=_parse_time(rec["created_at"]),
                metrics={str(k): v for k, v in dict(rec.get("metrics") or {}).items()},
                tags=tuple(rec.get("tags") or ()),
                pinned=bool(rec.get("pinned", False)),
                size_bytes=int(rec.get("size_bytes", 0)),
                files={check_path(k): v for k, v in dict(rec.get("files") or {}).items()},
                format=str(rec.get("format", "torch")),
                url=url,
                objects=tuple(rec.get("objects") or ()),
                torch_version=str(rec.get("torch_version", "")),
                exports={check_file_name(k): v for k, v in dict(rec.get("exports") or {}).items()},
                layout=layout,
                name=None if name is None else check_version_name(name),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed version record {dict(rec)!r}: {exc}") from exc

    def with_(self, **changes: Any) -> CheckpointInfo:
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


def meta_bytes(info: CheckpointInfo, extra: Mapping[str, Any] | None = None) -> bytes:
    """The ``meta.json`` content of a version: its record without the index-only fields.

    Args:
        info: the version's record.
        extra: layout-specific fields stored beside it (e.g. a sharded save's ``world_size``).
    """
    rec = info.to_record(with_index_fields=False)
    rec.update(extra or {})
    return json.dumps(rec, indent=1).encode()


@dataclass
class Checkpoint:
    """What ``restore()`` returns: the record plus everything not loaded in place.

    ``missing_keys`` / ``unexpected_keys`` map each restored module's name to the keys the
    module lacked in the saved state / the saved keys it had no place for (a ``strict=False``
    partial restore; empty lists after a strict one).
    """

    info: CheckpointInfo
    state: dict[str, Any]
    extra: dict[str, Any]
    missing_keys: dict[str, list[str]] = field(default_factory=dict)
    unexpected_keys: dict[str, list[str]] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return self.info.step

    @property
    def epoch(self) -> int | None:
        return self.info.epoch

    @property
    def metrics(self) -> dict[str, float]:
        return self.info.metrics
