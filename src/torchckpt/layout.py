"""Where things live under a root, and which names are allowed: the one place for both.

```
<root>/
  manifest.json                 index of committed versions (MANIFEST)
  versions/<version-id>/        one folder per version (VERSIONS, version_dir)
      meta.json                 the version's record, written last (META)
  exports/<version-id>/<name>   inference artifacts (EXPORTS, export_path)
  tier.json, uploads/<id>       a cache tier only: its root, and which versions reached it (uploaded_marker)
```

A folder version (``layout="files"``) records relative paths such as
``sub/dir/file.bin`` (``check_rel_path``); every other version records plain
file names (``check_file_name``).

Every path a user, a manifest or a framework supplies goes through a check here
before it reaches storage, so nothing can escape the root.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timezone

from .errors import CheckpointError

MANIFEST = "manifest.json"
VERSIONS = "versions"
META = "meta.json"
EXPORTS = "exports"
#: Prefix of a local disk's hidden staging folder (renamed into place at commit).
STAGING_PREFIX = ".tmp-"
#: In a cache tier only: which root it belongs to, and one marker per version uploaded there.
TIER_BINDING = "tier.json"
UPLOADS = "uploads"
#: What the conditional-write probe found for this root and server (object stores; see storage/probe.py).
PROBE_MARKER = ".torchckpt-conditional-writes.json"
#: Prefix of the probe's short-lived test objects.
PROBE_PREFIX = ".torchckpt-probe-"
#: The writer lease of a root whose server ignores conditional writes (storage/lease.py).
LEASE_SUFFIX = ".lease"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_FILE_RE = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,199}$")
#: Names chosen by callers that become file names (safetensors objects, export artifacts).
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,120}$")
#: One segment of a folder version's relative path: no separators, no glob magic, no control characters.
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_.,=+@~()-](?:[A-Za-z0-9_.,=+@~() -]{0,253}[A-Za-z0-9_.,=+@~()-])?$")
#: A version's caller-chosen name (a framework's checkpoint file name such as ``epoch=1-step=20.ckpt``).
_VERSION_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,=+@~-]{0,199}$")
#: Selectors a version name may not shadow.
RESERVED_NAMES = ("latest", "best")
#: Deepest folder nesting a folder version may record.
MAX_DEPTH = 32
_ID_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"


def new_version_id(step: int, now: datetime | None = None) -> str:
    """A readable, URL-safe id that sorts by time; the random suffix keeps writers apart.

    Args:
        step: the training step, written zero-padded into the id.
        now: the save's time (default: now, UTC).

    Returns:
        An id such as ``20261128T192705.123456Z-step000100-a1b2c3``.
    """
    now = now or datetime.now(timezone.utc)
    stamp = now.astimezone(timezone.utc).strftime(_ID_TIME_FORMAT)
    return f"{stamp}-step{step:06d}-{secrets.token_hex(3)}"


def id_time(name: str) -> float | None:
    """The start time (POSIX seconds) encoded in a version id or a staging folder name, if any."""
    stem = name[len(STAGING_PREFIX) :] if name.startswith(STAGING_PREFIX) else name
    try:
        return datetime.strptime(stem[:23], _ID_TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def check_version_id(version: str) -> str:
    """Reject ids that could escape the root or confuse a URL (``..``, ``/``, ...).

    Raises:
        CheckpointError: the id is not a plain ``[A-Za-z0-9._-]`` name.
    """
    if not isinstance(version, str) or not _ID_RE.match(version) or ".." in version:
        raise CheckpointError(
            f"invalid version id {version!r}: ids use only [A-Za-z0-9._-], "
            "start with a letter or digit and contain no '..'"
        )
    return version


def check_file_name(name: str) -> str:
    """A file named by a record lives directly in its version (or export) folder: no paths.

    Raises:
        CheckpointError: ``name`` is not a plain file name.
    """
    if not isinstance(name, str) or not _FILE_RE.match(name) or ".." in name or name == ".":
        raise CheckpointError(f"invalid file name {name!r} in a version record: only plain names are allowed")
    return name


def check_rel_path(name: str) -> str:
    """A file of a folder version: a relative POSIX path of plain segments that stays inside its version.

    ``a/b/c.bin`` is fine; absolute paths, ``..`` or ``.`` segments, backslashes, empty
    segments, glob characters (``*?[]``), control characters and a top-level ``meta.json``
    (the commit marker) are not.

    Args:
        name: the path as recorded (``/``-separated).

    Returns:
        ``name`` unchanged.

    Raises:
        CheckpointError: ``name`` could escape its version folder or cannot be stored safely.
    """
    if not isinstance(name, str) or not name or name.startswith("/") or name == META:
        raise CheckpointError(f"invalid file path {name!r} in a folder version: use a relative path other than {META}")
    parts = name.split("/")
    if len(parts) > MAX_DEPTH or any(p in ("", ".", "..") or not _SEGMENT_RE.match(p) for p in parts):
        raise CheckpointError(
            f"invalid file path {name!r} in a folder version: each '/'-separated part must be a plain name "
            "(letters, digits, spaces inside, and _ . , = + @ ~ ( ) -; no '..', no backslash, no glob characters)"
        )
    return name


def check_version_name(name: str) -> str:
    """A caller-chosen version name: usable as a selector, so it cannot look like another selector.

    Raises:
        ValueError: ``name`` holds anything but letters, digits and ``_ . , = + @ ~ -``, is ``latest``/``best``,
            is all digits (a step), contains ``..`` or is longer than 200 characters.
    """
    if (
        not isinstance(name, str)
        or not _VERSION_NAME_RE.match(name)
        or ".." in name
        or name in RESERVED_NAMES
        or name.isdigit()
    ):
        raise ValueError(
            f"invalid version name {name!r}: use 1-200 of letters, digits and _ . , = + @ ~ - (starting with a "
            "letter, digit or '_'), no '..', and not 'latest', 'best' or a plain number"
        )
    return name


def is_version_name(name: object) -> bool:
    """True for a string ``check_version_name`` accepts."""
    try:
        check_version_name(name)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def is_plain_name(name: object) -> bool:
    """True for a caller-chosen name that can safely become a file name."""
    return isinstance(name, str) and bool(_NAME_RE.match(name)) and ".." not in name


def check_names(names: Iterable[object], what: str) -> None:
    """Refuse caller-chosen names that cannot become file names.

    Args:
        names: the names to check.
        what: how the error calls them (e.g. ``"object name"``).

    Raises:
        ValueError: a name holds anything but letters, digits, ``_``, ``-`` and ``.``.
    """
    for name in names:
        if not is_plain_name(name):
            raise ValueError(f"{what} {name!r} cannot name a file: use letters, digits, '_', '-' and '.' only")


def version_dir(version: str) -> str:
    """``versions/<id>``, the id checked first."""
    return f"{VERSIONS}/{check_version_id(version)}"


def version_file(version: str, name: str) -> str:
    """``versions/<id>/<name>``, both checked (``name`` may be a folder version's relative path)."""
    return f"{version_dir(version)}/{name if '/' not in name and _plain_file(name) else check_rel_path(name)}"


def _plain_file(name: str) -> bool:
    try:
        check_file_name(name)
    except CheckpointError:
        return False
    return True


def meta_path(version: str) -> str:
    """``versions/<id>/meta.json``."""
    return f"{version_dir(version)}/{META}"


def export_dir(version: str) -> str:
    """``exports/<id>``."""
    return f"{EXPORTS}/{check_version_id(version)}"


def export_path(version: str, name: str) -> str:
    """``exports/<id>/<name>``, both checked."""
    return f"{export_dir(version)}/{check_file_name(name)}"


def uploaded_marker(version: str) -> str:
    """A cache tier's marker that ``version`` is committed and listed in its root."""
    return f"{UPLOADS}/{check_version_id(version)}"
