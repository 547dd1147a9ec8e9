"""``format="safetensors"``: each saved object's tensors in ``<name>.safetensors``.

Why: a ``.safetensors`` file is read by the safetensors library, Hugging Face
loaders and many other tools directly, and reading it runs no pickle at all.
The rest of a version (the structure of an optimizer state, step counters,
``extra``, RNG states, tensors safetensors cannot hold) stays in ``state.pt``,
which is loaded with ``torch.load(weights_only=True)`` as in the torch format.

Layout of a version::

    state.pt              # the payload with each moved tensor replaced by a placeholder
    model.safetensors     # tensors of the object saved as model=..., flat string keys
    optimizer.safetensors # ... one file per saved object that has tensors

Keys: a module's ``state_dict`` keys are kept as they are (``"0.weight"``), so
``model.safetensors`` loads straight into the same architecture elsewhere.
Nested states (an optimizer's ``state.0.exp_avg``) use their dotted path.

Shared tensors: tensors that are the same view of the same memory (tied
weights, e.g. an embedding and an output layer) are written once; the other
names are recorded as aliases (in ``state.pt`` and in the file's metadata) and
come back as the *same* tensor object on load, so ``load_state_dict`` puts
equal values in both places and a model that ties its parameters stays tied.
Tensors that only partly overlap are written as independent copies.

Files are written by our own streaming writer (one tensor at a time, nothing
buffered whole) and checksummed on the same pass; the header layout is the
safetensors format's: 8-byte little-endian header length, a JSON header padded
with spaces to a multiple of 8, then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import ctypes
import json
import logging
import struct
import sys
from collections.abc import Collection, Iterator, Mapping
from typing import IO, Any, ClassVar

import torch

from ..errors import CheckpointError
from ..hashing import HashingWriter, check_later, checksum_bytes, verify_record
from ..layout import is_plain_name, version_file
from ..records import CheckpointInfo
from ..storage import Storage, VersionWriter
from .base import FileRecords, Format, TensorRow, only_objects
from .devices import MapLocation, place
from .pickling import STATE_FILE, save_to
from .torch_file import read_state_file

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
#: Key of the placeholder dict that stands in ``state.pt`` for a tensor moved to a .safetensors file.
PLACEHOLDER = "__torchckpt_safetensors__"
_MAX_HEADER = 100 << 20  # the safetensors library's own limit

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.complex64: "C64",
}
for _attr, _code in [
    ("float8_e4m3fn", "F8_E4M3"),
    ("float8_e5m2", "F8_E5M2"),
    ("float8_e4m3fnuz", "F8_E4M3FNUZ"),
    ("float8_e5m2fnuz", "F8_E5M2FNUZ"),
    ("uint16", "U16"),
    ("uint32", "U32"),
    ("uint64", "U64"),
]:
    if hasattr(torch, _attr):
        _DTYPES[getattr(torch, _attr)] = _code
_CODES: dict[str, torch.dtype] = {code: dtype for dtype, code in _DTYPES.items()}


def file_name(object_name: str) -> str:
    return f"{object_name}{SUFFIX}"


def check_object_names(names: Any) -> None:
    """Object names become file names: refuse anything that is not a plain, safe name."""
    for name in names:
        if not is_plain_name(name):
            raise ValueError(
                f"object name {name!r} cannot name a file: with format='safetensors' use "
                "letters, digits, '_', '-' and '.' only"
            )


def dtype_name(code: str) -> str:
    """``"F32"`` -> ``"float32"`` (for summaries); unknown codes are returned as they are."""
    dtype = _CODES.get(code)
    return str(dtype).replace("torch.", "") if dtype is not None else code


# ----- splitting a payload ---------------------------------------------------------------------------
def _storable(t: torch.Tensor) -> bool:
    """Tensors a .safetensors file can hold; the rest stays in state.pt."""
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.layout == torch.strided
        and t.dtype in _DTYPES
        and t.device.type != "meta"
        and not t.is_quantized
    )


class _Collector:
    """Tensors of one saved object, keyed, with identical views stored once."""

    def __init__(self, object_name: str, fname: str) -> None:
        self.object_name = object_name
        self.fname = fname
        self.tensors: dict[str, torch.Tensor] = {}
        self.aliases: dict[str, str] = {}
        self._seen: dict[tuple[Any, ...], str] = {}

    def add(self, path: tuple[Any, ...], t: torch.Tensor) -> dict[str, str]:
        key = ".".join(str(p) for p in path) if path else self.object_name
        base, n = key, 1
        while key in self.tensors or key in self.aliases:
            key, n = f"{base}#{n}", n + 1
        identity = None
        if t.numel() > 0:
            identity = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
            first = self._seen.get(identity)
            if first is not None:  # a tied tensor: store once, re-tie on load
                self.aliases[key] = first
                return {PLACEHOLDER: first, "file": self.fname, "device": str(t.device)}
            self._seen[identity] = key
        self.tensors[key] = t
        return {PLACEHOLDER: key, "file": self.fname, "device": str(t.device)}


def _replace(value: Any, path: tuple[Any, ...], col: _Collector) -> Any:
    if isinstance(value, torch.Tensor):
        return col.add(path, value) if _storable(value) else value
    if isinstance(value, Mapping):
        if PLACEHOLDER in value:
            raise ValueError(f"state uses the reserved key {PLACEHOLDER!r}")
        out = {k: _replace(v, path + (k,), col) for k, v in value.items()}
        return type(value)(out) if type(value) is not dict and _rebuildable(value) else out  # type: ignore[call-arg]
    if isinstance(value, list):
        return [_replace(v, path + (i,), col) for i, v in enumerate(value)]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_replace(v, path + (i,), col) for i, v in enumerate(value))
    return value


def _rebuildable(value: Mapping[Any, Any]) -> bool:
    from collections import OrderedDict

    return isinstance(value, OrderedDict)


def split(payload: dict[str, Any]) -> tuple[dict[str, Any], list[_Collector]]:
    """The payload with object tensors replaced by placeholders, and each object's tensors."""
    check_object_names(payload["objects"])
    skeleton = dict(payload)
    objects: dict[str, Any] = {}
    collectors: list[_Collector] = []
    for name, state in payload["objects"].items():
        col = _Collector(name, file_name(name))
        objects[name] = _replace(state, (), col)
        if col.tensors:
            collectors.append(col)
    skeleton["objects"] = objects
    return skeleton, collectors


# ----- writing one file --------------------------------------------------------------------------------
def _raw_bytes(t: torch.Tensor) -> tuple[memoryview, torch.Tensor]:
    """The tensor's bytes without a copy when it is a contiguous CPU tensor (keep the tensor alive)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    t = t.contiguous()
    nbytes = t.numel() * t.element_size()
    if nbytes == 0:
        return memoryview(b""), t
    buf = (ctypes.c_ubyte * nbytes).from_address(t.data_ptr())
    return memoryview(buf).cast("B"), t


def write_file(col: _Collector, raw: IO[bytes], metadata: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Stream one .safetensors file into ``raw``; returns ``{"size", "checksum"}``."""
    if sys.byteorder != "little":
        raise NotImplementedError("format='safetensors' is written on little-endian hosts only")
    # Largest elements first keeps every tensor aligned to its element size.
    order = sorted(col.tensors, key=lambda k: -col.tensors[k].element_size())
    header: dict[str, Any] = {}
    offset = 0
    for key in order:
        t = col.tensors[key]
        n = t.numel() * t.element_size()
        header[key] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    meta = {"format": "pt", "torchckpt.object": col.object_name}
    if col.aliases:
        meta["torchckpt.aliases"] = json.dumps(col.aliases, sort_keys=True)
    meta.update(metadata or {})
    header["__metadata__"] = meta
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    writer = HashingWriter(raw, close_raw=False)
    writer.write(struct.pack("<Q", len(head)))
    writer.write(head)
    for key in order:
        view, keep = _raw_bytes(col.tensors[key])
        writer.write(view)
        del view, keep
    return writer.record()


# ----- reading -----------------------------------------------------------------------------------------
def parse_header(data: bytes | bytearray | memoryview, url: str) -> tuple[dict[str, Any], int]:
    """The header dict and where the data section starts, with strict bounds checks."""
    if len(data) < 8:
        raise CheckpointError(f"{url} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > _MAX_HEADER or 8 + n > len(data):
        raise CheckpointError(f"{url} is not a safetensors file (bad header length {n})")
    try:
        header = json.loads(bytes(data[8 : 8 + n]))
    except ValueError as exc:
        raise CheckpointError(f"{url} has a corrupt safetensors header: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{url} has a corrupt safetensors header")
    return header, 8 + n


def tensors_from_buffer(buf: Any, url: str) -> dict[str, torch.Tensor]:
    """Tensors of a whole .safetensors file held in ``buf`` (a writable buffer: views into it, no pickle, no copy)."""
    header, start = parse_header(buf, url)
    body = len(buf) - start
    out: dict[str, torch.Tensor] = {}
    mv = memoryview(buf)
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _CODES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            lo, hi = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{url}: bad entry for {key!r}: {exc}") from None
        numel = 1
        for d in shape:
            numel *= d
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not 0 <= lo <= hi <= body or hi - lo != numel * itemsize:
            raise CheckpointError(f"{url}: tensor {key!r} has inconsistent offsets")
        if numel == 0:
            out[key] = torch.empty(shape, dtype=dtype)
        else:
            out[key] = torch.frombuffer(mv[start + lo : start + hi], dtype=dtype).reshape(shape)
    return out


def read_file(
    storage: Storage, rel: str, expected: Mapping[str, Any] | None, *, verify: bool
) -> dict[str, torch.Tensor]:
    """A .safetensors file's tensors, verified first.

    A local file is memory-mapped (privately, copy-on-write): its checksum is computed
    from the page cache and the tensors are views of the same pages, as
    ``safetensors.torch.load_file`` does, so nothing is read twice or copied. Other
    backends read the whole file once into one buffer.
    """
    url = storage.url(rel)
    size = int(expected["size"]) if expected and "size" in expected else storage.size(rel)
    mapped = storage.map_read(rel)
    buf: Any = mapped if mapped is not None else storage.read_buffer(rel, size)
    if verify and expected:
        if len(buf) != size:
            verify_record(url, expected, "(not computed)", len(buf))
        check_later(url, expected, lambda: (checksum_bytes(buf), len(buf)))
    if len(buf) != size:
        raise CheckpointError(f"{url} holds {len(buf)} bytes, expected {size}")
    return tensors_from_buffer(buf, url)


def fill_skeleton(
    storage: Storage, info: CheckpointInfo, skeleton: dict[str, Any], *, map_location: MapLocation, verify: bool
) -> dict[str, Any]:
    """Put the tensors of every .safetensors file of ``info`` back into ``skeleton``."""
    loaded: dict[str, dict[str, torch.Tensor]] = {}
    placed: dict[tuple[str, str], torch.Tensor] = {}

    def tensor(ref: Mapping[str, Any]) -> torch.Tensor:
        fname, key = str(ref.get("file")), str(ref[PLACEHOLDER])
        if (fname, key) in placed:  # aliases come back as the very same tensor
            return placed[(fname, key)]
        if fname not in loaded:
            if fname not in info.files or not fname.endswith(SUFFIX):
                raise CheckpointError(f"version {info.version} refers to a missing tensor file {fname!r}")
            loaded[fname] = read_file(storage, version_file(info.version, fname), info.files[fname], verify=verify)
        try:
            t = loaded[fname][key]
        except KeyError:
            raise CheckpointError(f"{storage.url(version_file(info.version, fname))} has no tensor {key!r}") from None
        placed[(fname, key)] = place(t, str(ref.get("device", "cpu")), map_location)
        return placed[(fname, key)]

    def fill(value: Any) -> Any:
        if isinstance(value, Mapping):
            if PLACEHOLDER in value:
                return tensor(value)
            out = {k: fill(v) for k, v in value.items()}
            return type(value)(out) if _rebuildable(value) else out  # type: ignore[call-arg]
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return tuple(fill(v) for v in value)
        return value

    payload = dict(skeleton)
    payload["objects"] = fill(skeleton["objects"])
    return payload


# ----- summaries from headers only -------------------------------------------------------------------------
def read_header(storage: Storage, rel: str) -> dict[str, Any]:
    """Just the JSON header of a stored .safetensors file (two small ranged reads)."""
    url = storage.url(rel)
    first = storage.read_range(rel, 0, 8)
    if len(first) < 8:
        raise CheckpointError(f"{url} is not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", first)
    if n > _MAX_HEADER:
        raise CheckpointError(f"{url} is not a safetensors file (bad header length {n})")
    head = storage.read_range(rel, 8, 8 + n)
    return parse_header(first + head, url)[0]


def walk_summary(prefix: str, value: Any, header_of: Any) -> Iterator[tuple[str, tuple[int, ...], str, int]]:
    """(name, shape, dtype, numel) of every tensor in a skeleton; placeholders read from headers."""
    if isinstance(value, torch.Tensor):
        yield prefix, tuple(value.shape), str(value.dtype).replace("torch.", ""), value.numel()
    elif isinstance(value, Mapping):
        if PLACEHOLDER in value:
            entry = header_of(str(value.get("file")))[str(value[PLACEHOLDER])]
            shape = tuple(int(d) for d in entry["shape"])
            numel = 1
            for d in shape:
                numel *= d
            yield prefix, shape, dtype_name(entry["dtype"]), numel
            return
        for k, v in value.items():
            yield from walk_summary(f"{prefix}.{k}" if prefix else str(k), v, header_of)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from walk_summary(f"{prefix}.{i}" if prefix else str(i), v, header_of)


class SafetensorsFormat(Format):
    """``<name>.safetensors`` per saved object, the rest in ``state.pt``."""

    name: ClassVar[str] = "safetensors"

    def write(self, writer: VersionWriter, payload: dict[str, Any]) -> FileRecords:
        skeleton, collectors = split(payload)
        files: FileRecords = {}
        for col in collectors:
            with writer.open(col.fname) as f:
                files[col.fname] = write_file(col, f)
        with writer.open(STATE_FILE) as f:
            files[STATE_FILE] = save_to(skeleton, f)
        return files

    def read(
        self,
        storage: Storage,
        info: CheckpointInfo,
        *,
        map_location: MapLocation,
        verify: bool,
        trust_pickle: bool,
        objects: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """The payload; only the ``.safetensors`` files of ``objects`` (all for None) are read."""
        skeleton = read_state_file(storage, info, map_location=map_location, verify=verify, trust_pickle=trust_pickle)
        skeleton = only_objects(skeleton, objects)
        return fill_skeleton(storage, info, skeleton, map_location=map_location, verify=verify)

    def summarize(self, storage: Storage, info: CheckpointInfo) -> list[TensorRow]:
        """Rows from ``state.pt`` and the files' headers only.

        ``state.pt`` (small: structure, counters, RNG) is read and checksum-verified;
        the .safetensors files are not read beyond their headers, so this stays cheap
        for a multi-gigabyte model on S3 (``verify`` checks their bytes).
        """
        skeleton = read_state_file(storage, info, map_location="cpu", verify=True)
        headers: dict[str, dict[str, Any]] = {}

        def header_of(fname: str) -> dict[str, Any]:
            if fname not in headers:
                if fname not in info.files or not fname.endswith(SUFFIX):
                    raise CheckpointError(f"version {info.version} refers to a missing tensor file {fname!r}")
                headers[fname] = read_header(storage, version_file(info.version, fname))
            return headers[fname]

        return [TensorRow(*row) for row in walk_summary("", skeleton.get("objects", {}), header_of)]
