"""Reading versions back: a payload (verified), a restore into live objects with fallback, a whole module.

``restore_into`` walks the candidates the manager chose (the selected version, then,
with ``fallback``, older ones) and stops at the first that reads cleanly; a data
file that vanished from a listed version is reported as the corruption it is.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any, TypeVar

import torch

from . import rng
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ChecksumMismatchError,
    MissingObjectError,
    UnsafeCheckpointError,
)
from .formats import format_of
from .formats.devices import MapLocation
from .formats.pickling import MODULE_FILE, load_from
from .hashing import overlapped_checks
from .layout import version_file
from .live_objects import load_into, match_module_state
from .records import Checkpoint, CheckpointInfo
from .storage import Storage
from .training.wrapped import KeyMap

log = logging.getLogger(__name__)

#: Failures that mean "this version's data is unusable" (for ``fallback``).
DATA_ERRORS = (CheckpointError, FileNotFoundError, RuntimeError, EOFError, ValueError, OSError)
T = TypeVar("T")
#: The copies of one version to read, best first: ``(storage, record there)`` (a cache tier's, then the root's).
Copies = list[tuple[Storage, CheckpointInfo]]


def read_first(copies: Copies, read: Callable[[Storage, CheckpointInfo], T]) -> T:
    """``read`` the first usable copy of one version; warn for each unusable one before the last.

    Args:
        copies: where the version is, best first (one entry without a cache tier).
        read: reads one copy.

    Returns:
        What ``read`` returned for the first copy that read cleanly.

    Raises:
        UnsafeCheckpointError: from any copy (never a reason to try another).
        CheckpointError: the last copy failed too (its error).
    """
    for i, (storage, info) in enumerate(copies):
        try:
            return read(storage, info)
        except (UnsafeCheckpointError, MissingObjectError):
            raise
        except DATA_ERRORS as exc:
            if i == len(copies) - 1:
                raise
            nxt = copies[i + 1][0].root_url
            warnings.warn(
                f"the copy of {info.version} in {storage.root_url} is unusable ({exc}); reading it from {nxt}",
                stacklevel=3,
            )
            log.warning("copy of %s in %s unusable (%s); reading it from %s", info.version, storage.root_url, exc, nxt)
    raise CheckpointNotFoundError("no copy to read")  # only for an empty list


def read_payload(
    storage: Storage,
    info: CheckpointInfo,
    *,
    map_location: MapLocation,
    verify: bool,
    trust_pickle: bool,
    is_listed: Callable[[str], bool],
    objects: Collection[str] | None = None,
) -> dict[str, Any]:
    """A version's payload through its format, a vanished file reported as corruption.

    Args:
        storage: the root.
        info: the version.
        map_location: device remapping.
        verify: check sizes and checksums.
        trust_pickle: allow arbitrary pickle.
        is_listed: whether a version id is still listed (tells "pruned meanwhile" from "damaged").
        objects: read only these saved objects (None: all); see ``Format.read``.

    Raises:
        CheckpointNotFoundError: the version was removed while loading.
        ChecksumMismatchError: a file is corrupt or missing.
        UnsafeCheckpointError: loading would need arbitrary pickle.
    """
    try:
        return format_of(info).read(
            storage, info, map_location=map_location, verify=verify, trust_pickle=trust_pickle, objects=objects
        )
    except FileNotFoundError as exc:  # a listed version lost a data file: as corrupt as a bad checksum
        if not is_listed(info.version):
            raise CheckpointNotFoundError(
                f"version {info.version} was removed (pruned or deleted) from {storage.root_url} while loading"
            ) from exc
        name = next((n for n in info.files if n in str(exc)), None) or next(
            (n for n in info.files if not storage.exists(version_file(info.version, n))), "a data file"
        )
        expected = str(info.files.get(name, {}).get("checksum", "a recorded file"))
        raise ChecksumMismatchError(f"{info.url}/{name}", expected, "no such file") from exc


def read_objects(
    storage: Storage,
    info: CheckpointInfo,
    *,
    map_location: MapLocation,
    verify: bool,
    trust_pickle: bool,
    is_listed: Callable[[str], bool],
    objects: Collection[str] | None,
) -> dict[str, Any]:
    """The saved objects of a version (``load``): all, or only the named ones.

    Args:
        storage: the root.
        info: the version.
        map_location: device remapping.
        verify: check sizes and checksums of what is read.
        trust_pickle: allow arbitrary pickle.
        is_listed: see ``read_payload``.
        objects: the names to read (None: every saved object).

    Returns:
        Object name -> saved state, in saved order.

    Raises:
        MissingObjectError: a name the version did not save.
        ChecksumMismatchError: a file read is corrupt or missing.
    """
    if objects is not None:
        objects = list(objects)
        unknown = [n for n in objects if info.objects and n not in info.objects]
        if unknown:
            raise MissingObjectError(
                f"version {info.version} has no {', '.join(unknown)}; it saved: {', '.join(info.objects)}"
            )
    states: dict[str, Any] = read_payload(
        storage,
        info,
        map_location=map_location,
        verify=verify,
        trust_pickle=trust_pickle,
        is_listed=is_listed,
        objects=objects,
    )["objects"]
    missing = [n for n in objects or () if n not in states]
    if missing:
        raise MissingObjectError(f"version {info.version} has no {', '.join(missing)}; it saved: {', '.join(states)}")
    return states


def restore_into(
    storage: Storage,
    candidates: list[CheckpointInfo],
    objects: Mapping[str, Any],
    *,
    map_location: MapLocation,
    strict: bool,
    restore_rng: bool,
    fallback: bool,
    verify: bool,
    trust_pickle: bool,
    collective: bool,
    is_listed: Callable[[str], bool],
    copies: Callable[[CheckpointInfo], Copies] | None = None,
    key_map: KeyMap | None = None,
) -> Checkpoint:
    """Restore the first usable candidate into ``objects`` in place.

    Args:
        storage: the root.
        candidates: the chosen version first, then (with ``fallback``) older ones, newest first.
        objects: name -> live object.
        map_location: device remapping.
        strict: modules must match key for key.
        restore_rng: restore the saved RNG states.
        fallback: warn and try the next candidate when one is unusable.
        verify: check sizes and checksums.
        trust_pickle: allow arbitrary pickle.
        collective: sharded versions are restored by every rank of the process group.
        is_listed: see ``read_payload``.
        copies: where each candidate can be read from, best first (default: ``storage`` only).
        key_map: renames (or drops, with None) saved module keys before loading.

    Returns:
        The restored checkpoint (with each module's missing / unexpected keys).

    Raises:
        CheckpointNotFoundError: no candidate could be restored.
        MissingObjectError: a name was given that the version did not save.
        NoMatchingKeysError: a module would load none of its keys.
    """
    for info in candidates:
        try:
            if info.layout == "dcp":  # sharded: DCP loads into the live objects (collective, reshards)
                from .distributed import restore_sharded

                if key_map is not None:
                    raise TypeError(f"key_map is not supported for sharded (DCP) version {info.version}")
                ckpt = restore_sharded(
                    storage,
                    info,
                    objects,
                    collective=collective,
                    strict=strict,
                    restore_rng=restore_rng,
                    verify=verify,
                    trust_pickle=trust_pickle,
                )
                log.info("restored sharded %s from %s", info.version, storage.root_url)
                return ckpt
            wanted = list(objects) if objects and info.objects else None  # None: read everything

            def read_and_load(
                src: Storage, version: CheckpointInfo, wanted: list[str] | None = wanted
            ) -> tuple[Storage, dict[str, Any], Loaded]:
                with overlapped_checks():  # local files are hashed on a worker thread while we copy them in
                    payload = read_payload(
                        src,
                        version,
                        map_location=map_location,
                        verify=verify,
                        trust_pickle=trust_pickle,
                        is_listed=is_listed,
                        objects=wanted,
                    )
                    loaded = _load_objects(version, payload["objects"], objects, strict, key_map)
                return src, payload, loaded

            source, payload, loaded = read_first(copies(info) if copies else [(storage, info)], read_and_load)
            break
        except (UnsafeCheckpointError, MissingObjectError):
            raise
        except DATA_ERRORS as exc:
            if not fallback:
                raise
            warnings.warn(f"version {info.version} is unusable ({exc}); trying an older one", stacklevel=3)
            log.warning("restore fallback: %s unusable: %s", info.version, exc)
    else:
        raise CheckpointNotFoundError(f"no version under {storage.root_url} could be restored")
    missing_keys, unexpected_keys, problem = loaded
    if problem is not None:  # the bytes were sound: a mismatch between the state and the live object
        raise problem
    states = payload["objects"]
    if wanted is not None:
        chosen, chosen_storage = info, source

        def read_one(name: str) -> Any:
            return read_payload(
                chosen_storage,
                chosen,
                map_location=map_location,
                verify=verify,
                trust_pickle=trust_pickle,
                is_listed=is_listed,
                objects=[name],
            )["objects"][name]

        states = SavedStates(states, info.objects, read_one)
    ckpt = Checkpoint(info=info, state=states, extra=payload.get("extra", {}))
    ckpt.missing_keys.update(missing_keys)
    ckpt.unexpected_keys.update(unexpected_keys)
    if restore_rng and payload.get("rng"):
        rng.restore(payload["rng"])
    log.info("restored %s from %s", info.version, storage.root_url)
    return ckpt


#: What loading into the live objects found: missing keys, unexpected keys (by module name), a load failure.
Loaded = tuple[dict[str, list[str]], dict[str, list[str]], Exception | None]


def _load_objects(
    info: CheckpointInfo,
    states: Mapping[str, Any],
    objects: Mapping[str, Any],
    strict: bool,
    key_map: KeyMap | None,
) -> Loaded:
    """Load each state into its live object; a loading failure is returned, to raise once the bytes are verified.

    Every module's keys are matched (wrappers, prefixes, ``key_map``) before anything is loaded, so a
    module that would load no key stops the restore before any object changed.

    Raises:
        MissingObjectError: a name was given that the version did not save.
    """
    missing = [name for name in objects if name not in states]
    if missing:
        saved = info.objects or tuple(states)
        raise MissingObjectError(
            f"version {info.version} has no {', '.join(missing)}; it saved: {', '.join(saved) or 'nothing'}"
        )
    missing_keys: dict[str, list[str]] = {}
    unexpected_keys: dict[str, list[str]] = {}
    try:
        to_load = dict(states)
        for name, obj in objects.items():
            if isinstance(obj, torch.nn.Module):
                to_load[name], report = match_module_state(name, obj, states[name], strict, key_map)
                missing_keys[name], unexpected_keys[name] = report.missing, report.unexpected
        for name, obj in objects.items():
            load_into(name, obj, to_load[name], strict)
    except Exception as exc:  # key mismatches, shapes: not data damage, never a reason to fall back
        return missing_keys, unexpected_keys, exc
    return missing_keys, unexpected_keys, None


def load_whole_model(
    storage: Storage, info: CheckpointInfo, *, map_location: MapLocation, trust_pickle: bool, verify: bool
) -> torch.nn.Module:
    """The pickled module of a ``whole_model=True`` version.

    Raises:
        CheckpointError: the version has no pickled module, or it is not a module.
        UnsafeCheckpointError: without ``trust_pickle``.
    """
    if MODULE_FILE not in info.files:
        raise CheckpointError(f"version {info.version} was not saved with whole_model=True; use restore()")
    if not trust_pickle:
        raise UnsafeCheckpointError(
            f"version {info.version} stores a pickled module, which can run arbitrary code on load; "
            "pass trust_pickle=True if you trust its source"
        )
    rel = version_file(info.version, MODULE_FILE)
    source = storage.load_source(rel, info.files[MODULE_FILE], verify=verify)
    module = load_from(source, map_location=map_location, trust_pickle=True)
    if not isinstance(module, torch.nn.Module):
        raise CheckpointError(f"{storage.url(rel)} does not hold an nn.Module")
    return module


class SavedStates(dict):
    """``Checkpoint.state`` after a partial read: a saved object not read yet is read on first use.

    ``restore(model=net)`` reads (and verifies) only the model's data; the version's
    other objects stay listed here and are read, verified, when first looked up
    (``state["optimizer"]``, ``.get``), or all at once by anything that walks the
    whole dict (iteration, ``items()``, ``values()``, ``copy()``, ``==``).
    """

    def __init__(self, loaded: Mapping[str, Any], names: Collection[str], read_one: Callable[[str], Any]) -> None:
        super().__init__(loaded)
        self._names = [n for n in names if n not in loaded] + list(loaded)
        self._read_one = read_one

    def __missing__(self, key: str) -> Any:
        if key not in self._names:
            raise KeyError(key)
        value = self._read_one(key)
        dict.__setitem__(self, key, value)
        return value

    def _read_all(self) -> None:
        for name in self._names:
            if not dict.__contains__(self, name):
                self[name]

    def get(self, key: str, default: Any = None) -> Any:
        """The state of ``key`` (read now if needed), or ``default`` when it was not saved."""
        return self[key] if key in self else default  # noqa: SIM401 (dict.get would not read it)

    def __contains__(self, key: object) -> bool:
        return key in self._names or dict.__contains__(self, key)

    def __len__(self) -> int:
        self._read_all()
        return dict.__len__(self)

    def __iter__(self) -> Iterator[str]:
        self._read_all()
        return dict.__iter__(self)

    def keys(self) -> Any:
        """Every saved name (reads the objects not read yet)."""
        self._read_all()
        return dict.keys(self)

    def items(self) -> Any:
        """Every saved object's state (reads the objects not read yet)."""
        self._read_all()
        return dict.items(self)

    def values(self) -> Any:
        """Every saved object's state (reads the objects not read yet)."""
        self._read_all()
        return dict.values(self)

    def copy(self) -> dict[str, Any]:
        """A plain dict of every saved object's state."""
        self._read_all()
        return dict(dict.items(self))

    def __eq__(self, other: object) -> bool:
        self._read_all()
        return dict.__eq__(self, other)

    __hash__ = None

    def __repr__(self) -> str:
        pending = [n for n in self._names if not dict.__contains__(self, n)]
        return (
            f"{dict.__repr__(self)[:-1]}{', ' if pending and dict.__len__(self) else ''}"
            + ", ".join(f"{n!r}: <not read yet>" for n in pending)
            + "}"
        )
