"""Inference exports of a saved version: TorchScript and ``torch.export`` artifacts.

An export is made *from a version*, not from whatever the live model holds:
the version's weights are loaded into the given module first (like
``restore(model=...)``), so the artifact always matches what the manifest says.
Artifacts live under ``exports/<version-id>/<name>``, are checksummed while they
stream out, and are recorded on that version in the manifest
(``info.exports[name]``), so ``list``/``show`` mention them and pruning or
deleting the version removes them too.

``torch.export`` is the future path: TorchScript is deprecated in torch 2.13 and
its every call emits a ``DeprecationWarning``. Those warnings come from *our*
calls, so they are silenced around exactly those calls (and nothing else) and a
program run with ``-W error::DeprecationWarning`` keeps working.

Safety when loading:

* TorchScript archives hold TorchScript code (compiled and run by the
  TorchScript interpreter, not Python) and pickles that TorchScript's own
  unpickler reads: it resolves only TorchScript types, never arbitrary Python
  globals, so a crafted pickle inside cannot run Python code. The model code
  itself still runs when you call the module: load archives you trust.
* ``torch.export.load`` is documented by PyTorch as "uses pickle under the hood
  ... never load data from an untrusted source": weights flagged ``use_pickle``
  and custom/opaque constants are unpickled with ``weights_only=False``, sample
  inputs fall back to full pickle when the safe load fails, and AOTInductor
  packages carry native code. ``load_program`` therefore inspects the archive
  first and refuses (``UnsafeCheckpointError``) anything but plain tensor
  payloads, JSON graphs and sample inputs that load with ``weights_only=True``,
  unless ``trust_pickle=True``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import posixpath
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from typing import Any

import torch

from . import manifest as mf
from .errors import (
    CheckpointError,
    CheckpointNotFoundError,
    MissingObjectError,
    UnsafeCheckpointError,
)
from .hashing import HashingWriter, checksum_bytes, verify_record
from .layout import EXPORTS, export_path, is_plain_name
from .storage import Storage, open_storage

log = logging.getLogger(__name__)


# ----- small helpers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_jit() -> Iterator[None]:
    """Silence torch's "torch.jit.* is deprecated" warnings for the calls we make ourselves.

    Only ``DeprecationWarning``s whose message names ``torch.jit`` are ignored;
    tracer warnings and everything else still reach the user. (Like any use of
    ``warnings.catch_warnings`` this is not thread-safe with respect to other
    threads changing warning filters at the same moment.)
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit", category=DeprecationWarning)
        yield


def _check_name(name: str) -> str:
    if not is_plain_name(name):
        raise ValueError(f"export name {name!r} must be a plain file name ([A-Za-z0-9_.-], no '..')")
    return name


def _as_args(example_inputs: Any) -> tuple[Any, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise TypeError("example_inputs must be a tensor or a tuple of the model's positional inputs")
    return example_inputs


@contextlib.contextmanager
def _kept_modes(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for exporting and give every submodule its own mode back."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, training in modes:
            m.training = training


def _load_version_weights(manager: Any, model: torch.nn.Module, version: Any, object_name: str | None) -> Any:
    """Load the chosen version's weights into ``model`` (restore semantics); returns its info."""
    info = manager.resolve(version)
    objects = manager.load(info, map_location="cpu")
    if object_name is None:
        if "model" in objects:
            object_name = "model"
        elif len(objects) == 1:
            object_name = next(iter(objects))
        else:
            raise MissingObjectError(
                f"version {info.version} saved {', '.join(objects)}: pass object_name= to say which one is the model"
            )
    if object_name not in objects:
        raise MissingObjectError(f"version {info.version} has no {object_name}; it saved: {', '.join(objects)}")
    model.load_state_dict(objects[object_name])
    return info


def _write_artifact(storage: Storage, rel: str, produce: Any) -> dict[str, Any]:
    """Stream an artifact to ``rel``, checksummed; it appears only once complete."""
    with storage.atomic_writer(rel) as raw:
        stream = HashingWriter(raw, close_raw=False)
        produce(stream)
    return stream.record()


def _record(manager: Any, info: Any, name: str, rel: str, entry: dict[str, Any]) -> None:
    """Note the artifact on its version in the manifest; undo the write when the version is gone."""

    def change(m: mf.Manifest) -> mf.Manifest:
        current = m.find(info.version)
        if current is None:
            raise CheckpointNotFoundError(f"version {info.version} was removed while it was being exported")
        exports = dict(current.exports)
        exports[name] = entry
        m.replace(current.with_(exports=exports))
        return m

    try:
        mf.update(manager.storage, change)
    except CheckpointNotFoundError:
        manager.storage.remove([rel])
        raise


def _export(manager: Any, info: Any, name: str, kind: str, produce: Any, **details: Any) -> str:
    rel = export_path(info.version, name)
    record = _write_artifact(manager.storage, rel, produce)
    entry = {
        "kind": kind,
        **details,
        **record,
        "created_at": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "torch_version": torch.__version__,
    }
    _record(manager, info, name, rel, entry)
    url = manager.storage.url(rel)
    log.info("exported version %s as %s (%s, %d bytes)", info.version, url, kind, record["size"])
    return url


# ----- exporting ----------------------------------------------------------------------------------------
def export_torchscript(
    manager: Any,
    model: torch.nn.Module,
    version: Any = "latest",
    *,
    name: str = "model.pt",
    method: str = "script",
    example_inputs: Any = None,
    object_name: str | None = None,
) -> str:
    """Load ``version``'s weights into ``model``, script (or trace) it and store it; returns the URL.

    ``model`` keeps the version's weights afterwards (as after ``restore``) and
    gets its train/eval modes back; the artifact is made in eval mode.
    ``object_name`` picks the saved object holding the weights (default
    ``"model"``, or the only object). TorchScript is deprecated upstream: prefer
    ``export_program``.
    """
    manager.check_writable()
    _check_name(name)
    if method not in ("script", "trace"):
        raise ValueError(f"method must be 'script' or 'trace', got {method!r}")
    args = _as_args(example_inputs) if example_inputs is not None else None
    if method == "trace" and args is None:
        raise ValueError("method='trace' needs example_inputs")
    info = _load_version_weights(manager, model, version, object_name)
    with _kept_modes(model), quiet_jit():
        compiled = torch.jit.script(model) if method == "script" else torch.jit.trace(model, args)
        data = compiled.save_to_buffer()  # what torch.jit.save writes to a stream
    return _export(manager, info, name, "torchscript", lambda f: f.write(data), method=method)


def export_program(
    manager: Any,
    model: torch.nn.Module,
    example_inputs: Any,
    version: Any = "latest",
    *,
    name: str = "model.pt2",
    object_name: str | None = None,
    dynamic_shapes: Any = None,
) -> str:
    """Load ``version``'s weights into ``model``, ``torch.export`` it and store the program; returns the URL.

    The graph is captured in eval mode (dropout off, batch norm on running
    statistics). ``dynamic_shapes`` is passed to ``torch.export.export`` (e.g.
    ``({0: torch.export.Dim("batch")},)`` to accept any batch size).
    """
    manager.check_writable()
    _check_name(name)
    args = _as_args(example_inputs)
    info = _load_version_weights(manager, model, version, object_name)
    with _kept_modes(model):
        program = torch.export.export(model, args, dynamic_shapes=dynamic_shapes)
    buf = io.BytesIO()  # torch.export.save wants a seekable buffer (zip directory at the end)
    torch.export.save(program, buf)
    data = buf.getbuffer()
    return _export(manager, info, name, "program", lambda f: f.write(data))


# ----- loading ------------------------------------------------------------------------------------------
def _locate(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Storage, str, tuple[str, str] | None]:
    """A storage, the artifact's path in it, and (version, name) when the URL is inside a torchckpt root."""
    url = os.fspath(url)
    head, sep, tail = url.rpartition(f"/{EXPORTS}/")
    parts = tail.split("/")
    if sep and head and len(parts) == 2 and all(parts):
        return open_storage(head, storage_options=storage_options), f"{EXPORTS}/{tail}", (parts[0], parts[1])
    folder, base = posixpath.split(url.replace("\\", "/"))
    return open_storage(folder or ".", storage_options=storage_options), base, None


def _expected(storage: Storage, where: tuple[str, str] | None) -> dict[str, Any] | None:
    """The artifact's recorded size and checksum, when a manifest next to it knows it."""
    if where is None:
        return None
    try:
        info = mf.read(storage).find(where[0])
    except Exception as exc:  # no manifest, unreadable, ...: nothing to check against
        log.debug("no export record for %s: %s", where, exc)
        return None
    return info.exports.get(where[1]) if info is not None else None


def _read(url: str, storage_options: Mapping[str, Any] | None, verify: bool) -> bytes:
    storage, rel, where = _locate(url, storage_options)
    data = storage.read_bytes(rel)
    expected = _expected(storage, where) if verify else None
    if expected:
        verify_record(storage.url(rel), expected, checksum_bytes(data), len(data))
    return data


def _device(map_location: Any, what: str) -> torch.device | None:
    if map_location is None:
        return None
    if isinstance(map_location, (str, torch.device)):
        return torch.device(map_location)
    raise TypeError(f"{what}: map_location must be a device (str or torch.device), got {type(map_location).__name__}")


def load_torchscript(
    url: str, *, map_location: Any = None, storage_options: Mapping[str, Any] | None = None, verify: bool = True
) -> torch.jit.ScriptModule:
    """Load a TorchScript artifact (no model class needed) in eval mode.

    ``map_location`` is a device (``"cpu"``, ``"cuda:1"``, ``torch.device``);
    ``None`` keeps each tensor where it was saved and falls back to the CPU
    when that device is missing here. When the URL is inside a torchckpt root,
    the artifact's checksum is checked against the manifest (``verify=False``
    skips it).
    """
    device = _device(map_location, "load_torchscript")
    data = _read(url, storage_options, verify)
    with quiet_jit():
        try:
            module = torch.jit.load(io.BytesIO(data), map_location=device)
        except RuntimeError as exc:
            if device is not None or "cuda" not in str(exc).lower():
                raise CheckpointError(f"{url} is not a loadable TorchScript archive: {exc}") from exc
            log.warning("%s was saved on a device this machine lacks; loading it onto the CPU", url)
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return module.eval()


def load_program(
    url: str,
    *,
    map_location: Any = None,
    storage_options: Mapping[str, Any] | None = None,
    verify: bool = True,
    trust_pickle: bool = False,
) -> torch.nn.Module:
    """Load a ``torch.export`` artifact and return ``program.module()`` in eval mode.

    ``map_location`` (a device) moves the module's parameters and buffers
    there after loading; operations the graph captured with an explicit device
    (e.g. ``torch.ones(..., device="cuda")`` inside ``forward``) keep it, so
    export on the device you will run on, or write device-agnostic code.
    The archive is inspected first and refused with ``UnsafeCheckpointError``
    if loading it would unpickle arbitrary objects or load native code,
    unless ``trust_pickle=True``. Use ``torch.export.load`` on the same bytes
    if you need the ``ExportedProgram`` itself.
    """
    device = _device(map_location, "load_program")
    data = _read(url, storage_options, verify)
    if not trust_pickle:
        check_program_archive(data, url)
    program = torch.export.load(io.BytesIO(data))
    module = program.module()
    if device is not None:
        module = module.to(device)
    # Exported modules refuse .eval(); the graph was captured in eval mode, so mark it so.
    for m in module.modules():
        m.training = False
    return module


# ----- archive inspection -------------------------------------------------------------------------------
_PLAIN_FILES = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}


def check_program_archive(data: bytes, url: str = "archive") -> None:
    """Refuse a .pt2 whose loading would run pickle beyond ``weights_only`` or native code."""

    def refuse(why: str) -> UnsafeCheckpointError:
        return UnsafeCheckpointError(
            f"{url}: {why}; torch.export.load would unpickle or execute it. Refused without loading; "
            "pass trust_pickle=True if you trust its source."
        )

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise CheckpointError(f"{url} is not a torch.export archive (not a zip file)") from None
    names = zf.namelist()
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise refuse("it is not a current .pt2 archive (legacy layouts load through full pickle)")
    root = roots.pop() + "/"
    rels = [n[len(root) :] for n in names if not n.endswith("/")]
    configs = [r for r in rels if re.fullmatch(r"data/(weights|constants)/[^/]+_(weights|constants)_config\.json", r)]
    raw_ok: set[str] = set()
    for rel in configs:
        folder = posixpath.dirname(rel)
        try:
            entries = json.loads(zf.read(root + rel))["config"]
        except (ValueError, KeyError, TypeError):
            raise refuse(f"{rel} is not a payload config") from None
        for fqn, meta in entries.items():
            path = str(meta.get("path_name", ""))
            if meta.get("use_pickle") or meta.get("tensor_meta") is None:
                raise refuse(f"{fqn!r} is stored as a pickle")
            if folder.endswith("constants") and not path.startswith("tensor_"):
                raise refuse(f"constant {fqn!r} is a custom or opaque object")
            raw_ok.add(f"{folder}/{path}")
    for rel in rels:
        if rel in _PLAIN_FILES or rel in configs or rel in raw_ok:
            continue
        if re.fullmatch(r"models/[^/]+\.json", rel) or rel.startswith("extra/"):
            continue
        if re.fullmatch(r"data/sample_inputs/[^/]+\.pt", rel):
            try:
                torch.load(io.BytesIO(zf.read(root + rel)), weights_only=True)
            except Exception as exc:
                raise refuse(f"{rel} needs more than weights_only loading ({type(exc).__name__})") from None
            continue
        raise refuse(f"it contains {rel}, which is not a plain tensor payload")
