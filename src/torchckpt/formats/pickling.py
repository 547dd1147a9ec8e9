"""``torch.save`` streamed through a checksum, and ``torch.load`` that refuses arbitrary pickle.

Writes use ``torch.save`` (zip format) streamed through a ``HashingWriter`` with
torch's own CRC32 switched off: our xxh3 checksum, computed on the same pass,
replaces it. Reads use ``weights_only=True``; anything needing arbitrary pickle
is refused as ``UnsafeCheckpointError`` before any of its code can run, and
``check_safe`` refuses, before writing, anything such a load could not read back.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import threading
from collections.abc import Iterator, Mapping
from typing import IO, Any, cast

import torch

from ..errors import UnsafeCheckpointError
from ..hashing import HashingWriter
from .devices import MapLocation, resolve_map_location

#: The torch-format payload of a version (the whole state, or the skeleton of a safetensors version).
STATE_FILE = "state.pt"
#: The pickled module of a ``whole_model=True`` version.
MODULE_FILE = "module.pt"
_CONFIG_LOCK = threading.Lock()
_SAFE_LEAVES = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size)
_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


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
    config: Any
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
    writer = HashingWriter(raw, close_raw=False)
    with _no_torch_crc():
        torch.save(payload, cast(IO[bytes], writer))
    return writer.record()


def save_pickled(obj: Any, raw: IO[bytes]) -> dict[str, Any]:
    """Whole-module save: full pickle, only ever loaded with ``trust_pickle=True``."""
    writer = HashingWriter(raw, close_raw=False)
    torch.save(obj, cast(IO[bytes], writer))
    return writer.record()


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
            map_location=cast(Any, resolve_map_location(map_location)),
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
