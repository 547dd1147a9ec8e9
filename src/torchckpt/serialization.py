"""Turning live objects into bytes and back, safely.

Writes use ``torch.save`` (zip format) streamed through a ``HashingWriter`` with
torch's own CRC32 switched off: our xxh3 checksum, computed on the same pass,
replaces it. Reads use ``weights_only=True``; anything needing arbitrary pickle
is refused as ``UnsafeCheckpointError`` before any of its code can run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import re
import threading
from collections.abc import Mapping
from typing import IO, Any, Callable, Iterator, Union

import torch

from .errors import ChecksumMismatchError, UnsafeCheckpointError
from .hashing import HashingWriter, checksum_bytes

log = logging.getLogger(__name__)

MapLocation = Union[None, str, torch.device, Mapping[str, str], Callable[..., Any]]

STATE_FILE = "state.pt"
MODULE_FILE = "module.pt"
_CONFIG_LOCK = threading.Lock()
_SAFE_LEAVES = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def capture(name: str, obj: Any) -> Any:
    """The state to store for one saved object (no copy: ``state_dict()`` returns views)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(
        f"cannot save {name}={type(obj).__name__}: pass an object with state_dict(), a tensor, "
        "or a dict of tensors"
    )


def _allowlisted(cls: type) -> bool:
    """A tensor subclass ``weights_only`` loads: registered with ``add_safe_globals`` (DTensor, NJT, ...)."""
    return any((g[0] if isinstance(g, tuple) else g) is cls for g in torch.serialization.get_safe_globals())


def check_safe(value: Any, where: str) -> None:
    """Refuse, before writing, anything ``weights_only`` loading could not read back."""
    if isinstance(value, torch.Tensor):
        if type(value) in (torch.Tensor, torch.nn.Parameter) or _allowlisted(type(value)):
            return
        raise TypeError(
            f"{where} is a tensor subclass {type(value).__module__}.{type(value).__qualname__}, which a safe "
            "(weights_only) load cannot read back: store a plain tensor (.as_subclass(torch.Tensor)) or "
            "register the class with torch.serialization.add_safe_globals"
        )
    if isinstance(value, _SAFE_LEAVES):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, _SAFE_LEAVES):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; use str or int keys")
            check_safe(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for i, v in enumerate(value):
            check_safe(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a safe "
        "(weights_only) load cannot read back: store tensors, numbers, strings, lists and dicts only"
    )


@contextlib.contextmanager
def _no_torch_crc() -> Iterator[None]:
    """Skip torch's zip CRC32 (a full extra pass): our streamed checksum covers every byte.

    Older torch releases (>=2.6) without the switch simply keep computing it.
    """
    try:
        from torch.utils.serialization import config
    except ImportError:
        config = None
    if config is None or not hasattr(config.save, "compute_crc32"):
        yield
        return
    with _CONFIG_LOCK:
        old = config.save.compute_crc32
        config.save.compute_crc32 = False
        try:
            yield
        finally:
            config.save.compute_crc32 = old


def save_to(payload: Any, raw: IO[bytes]) -> dict[str, Any]:
    """Stream ``payload`` into ``raw``; returns ``{"size", "checksum"}`` of what was written."""
    writer = HashingWriter(raw)
    with _no_torch_crc():
        torch.save(payload, writer)
    return writer.record()


def save_pickled(obj: Any, raw: IO[bytes]) -> dict[str, Any]:
    """Whole-module save: full pickle, only ever loaded with ``trust_pickle=True``."""
    writer = HashingWriter(raw)
    torch.save(obj, writer)
    return writer.record()


# ----- device remapping ------------------------------------------------------------------------
def _device_available(location: str) -> bool:
    try:
        dev = torch.device(location)
    except (RuntimeError, TypeError):
        return False
    if dev.type in ("cpu", "meta"):
        return True
    mod = getattr(torch, dev.type, None)
    try:
        if mod is None or not mod.is_available():
            return False
        return dev.index is None or dev.index < mod.device_count()
    except Exception:  # a backend module without the usual probes
        return False


def _keep_or_cpu(storage: Any, location: str) -> Any:
    """Default ``map_location``: stay on an available device, fall back to the CPU otherwise."""
    if _device_available(location):
        return None  # torch's default restore onto ``location``
    log.debug("device %s is not available here; loading onto the CPU", location)
    return storage


def resolve_map_location(map_location: MapLocation) -> MapLocation:
    return _keep_or_cpu if map_location is None else map_location


# ----- loading ----------------------------------------------------------------------------------
def load_from(
    source: str | IO[bytes],
    *,
    map_location: MapLocation = None,
    trust_pickle: bool = False,
    mmap: bool = False,
    what: str = "checkpoint",
) -> Any:
    """``torch.load`` with safe defaults; an unsafe file raises ``UnsafeCheckpointError``."""
    try:
        return torch.load(
            source,
            map_location=resolve_map_location(map_location),
            weights_only=not trust_pickle,
            mmap=mmap and isinstance(source, (str, os.PathLike)),
        )
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise
        found = _GLOBAL_RE.search(str(exc))
        offender = found.group(1) if found else "an unsupported type"
        raise UnsafeCheckpointError(
            f"{what} needs arbitrary pickle to load ({offender}); refused without running it. "
            "If you trust its source, pass trust_pickle=True."
        ) from None


def open_verified(
    storage: Any, rel: str, expected: Mapping[str, Any] | None, *, verify: bool
) -> str | IO[bytes]:
    """A local path or an in-memory stream of ``rel``, its size and checksum checked first."""
    if storage.is_local:
        path = storage.path(rel)
        if verify and expected:
            from .hashing import checksum_file  # hashed from a memory map: no read() copy

            actual, size = checksum_file(path)
            _compare(storage.url(rel), expected, actual, size)
        return path
    if getattr(storage, "is_s3", False) and expected and int(expected.get("size", 0)) >= 8 << 20:
        from . import s3_transfer

        try:  # one preallocated buffer, no joined second copy (see s3_transfer.fetch)
            buf = s3_transfer.fetch(storage.fs, storage.path(rel), int(expected["size"]))
        except s3_transfer.SizeMismatch:
            buf = None  # fall through: the plain read reports the size mismatch below
        if buf is not None:
            if verify:
                _compare(storage.url(rel), expected, checksum_bytes(buf), len(buf))
            return s3_transfer.BufferReader(buf)
    data = storage.read_bytes(rel)
    if verify and expected:
        _compare(storage.url(rel), expected, checksum_bytes(data), len(data))
    return io.BytesIO(data)


def _compare(url: str, expected: Mapping[str, Any], actual: str, size: int) -> None:
    want = str(expected.get("checksum", ""))
    if int(expected.get("size", size)) != size:
        raise ChecksumMismatchError(url, f"{want} ({expected.get('size')} bytes)", f"{actual} ({size} bytes)")
    if want and want != actual:
        raise ChecksumMismatchError(url, want, actual)


# ----- one version's payload (the format switch lives here, not in the manager) -----------------
def write_payload(writer: Any, payload: dict[str, Any], format: str) -> dict[str, dict[str, Any]]:
    """Write a version's state through a ``VersionWriter``; returns ``{file: {size, checksum}}``."""
    if format == "safetensors":  # tensors to <name>.safetensors, the rest to state.pt
        from . import safetensors_format

        return safetensors_format.write_payload(writer, payload, STATE_FILE, save_to)
    with writer.open(STATE_FILE) as f:
        return {STATE_FILE: save_to(payload, f)}


def read_payload(
    storage: Any, info: Any, *, map_location: MapLocation, verify: bool, trust_pickle: bool = False
) -> dict[str, Any]:
    """Read back what ``write_payload`` wrote for ``info``, verified unless ``verify=False``."""
    rel = f"versions/{info.version}/{STATE_FILE}"
    source = open_verified(storage, rel, info.files.get(STATE_FILE), verify=verify)
    payload = load_from(source, map_location=map_location, trust_pickle=trust_pickle, mmap=True, what=storage.url(rel))
    if not isinstance(payload, dict) or "objects" not in payload:
        from .errors import CheckpointError

        raise CheckpointError(f"{storage.url(rel)} is not a torchckpt state file")
    if getattr(info, "format", "torch") == "safetensors":
        from . import safetensors_format

        payload = safetensors_format.read_payload(storage, info, payload, map_location=map_location, verify=verify)
    return payload
