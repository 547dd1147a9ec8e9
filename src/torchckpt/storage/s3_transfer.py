"""Fast, memory-bounded transfers of large objects to and from S3 (through s3fs).

s3fs's streamed writer uploads one part at a time; ``fs.pipe`` is concurrent but
needs the whole object in memory. ``S3MultipartWriter`` streams: bytes written to
it fill fixed-size part buffers taken from a bounded pool, full parts are
uploaded concurrently on s3fs's event loop, and a buffer returns to the pool when
its part is acknowledged. Peak memory is ``max(concurrency + 1, window parts) *
part_size``, whatever the size of the object. Objects smaller than
``SINGLE_PUT_MAX`` go up in a single PUT: their first parts are held in the pool's
buffers (no extra memory) and sent as one streamed body when the writer closes;
only an object that outgrows the window starts a multipart upload, whose first
parts are the held buffers. (On moto, and on S3 for small objects, one PUT is
faster than create + parts + complete: fewer round trips, no server-side
concatenation.) Any failure aborts the multipart upload, so nothing partial is
ever visible, and raises ``StorageError``.

``fetch`` reads an object of known size into one preallocated buffer (one GET,
or concurrent ranged GETs), so no joined second copy is made.

Tunables are module attributes (tests shrink them): ``PART_SIZE`` (S3's minimum
is 5 MiB for every part but the last), ``CONCURRENCY`` (parts in flight) and
``READ_CONCURRENCY`` (ranged GETs per object; 1 = a single streamed GET).
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures as cf
import io
import logging
import os
from typing import Any

from ..errors import CheckpointError, StorageError

log = logging.getLogger(__name__)

MiB = 1 << 20
PART_SIZE = int(os.environ.get("TORCHCKPT_S3_PART_SIZE", 8 * MiB))
CONCURRENCY = int(os.environ.get("TORCHCKPT_S3_CONCURRENCY", 4))
READ_CONCURRENCY = int(os.environ.get("TORCHCKPT_S3_READ_CONCURRENCY", 1))
#: Objects below this size go up as one PUT (held in the part buffers, which it sizes: 6 x 8 MiB).
SINGLE_PUT_MAX = int(os.environ.get("TORCHCKPT_S3_SINGLE_PUT_MAX", 48 * MiB))
#: Parts per size step: after this many parts the part size doubles (S3 allows 10,000 parts).
_PARTS_PER_STEP = 1000
_READ_CHUNK = 4 * MiB


class SizeMismatch(StorageError):
    """The object is not the size its record says (callers report it as a checksum mismatch)."""


def _run(fs: Any, coro: Any) -> cf.Future[Any]:
    """Schedule a coroutine on s3fs's event loop thread; a concurrent future comes back."""
    return asyncio.run_coroutine_threadsafe(coro, fs.loop)


def _call(fs: Any, method: str, **kwargs: Any) -> Any:
    """One S3 call, waited for (through ``fs._call_s3``: s3fs's retries and error mapping)."""
    return _run(fs, fs._call_s3(method, **kwargs)).result()


class S3MultipartWriter(io.RawIOBase):
    """A write-only stream to one S3 object: concurrent multipart upload from a bounded buffer pool."""

    def __init__(self, fs: Any, path: str, *, part_size: int | None = None, concurrency: int | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.path = path
        self.bucket, self.key, _ = fs.split_path(path)
        self.base_part_size = int(part_size or PART_SIZE)
        self.concurrency = max(1, int(concurrency or CONCURRENCY))
        self._free: list[bytearray] = []
        self._held: list[bytearray] = []  # full parts kept back while the object may still fit one PUT
        self.window_parts = max(0, int(SINGLE_PUT_MAX) // self.base_part_size)
        self.pool_size = max(self.concurrency + 1, self.window_parts)
        self._allocated = 0  # buffers alive (free, filling, held or in flight): at most pool_size
        self.max_buffers = 0  # the most ever alive at once (memory bound = this * part size)
        self._buf: bytearray | None = None
        self._fill = 0
        self._upload_id: str | None = None
        self._inflight: dict[cf.Future[Any], tuple[int, bytearray]] = {}
        self._parts: list[dict[str, Any]] = []
        self._next_part = 1
        self._pos = 0
        self._failed: BaseException | None = None
        self._finished = False

    # ----- io protocol ----------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:  # parts leave when full; close() sends the rest
        pass

    def _part_size(self) -> int:
        return self.base_part_size << ((self._next_part - 1) // _PARTS_PER_STEP)

    def _take_buffer(self) -> bytearray:
        size = self._part_size()
        while True:
            while self._free:
                buf = self._free.pop()
                if len(buf) == size:
                    return buf
                self._allocated -= 1  # the part size grew: drop the smaller buffer
            if self._allocated < self.pool_size:
                self._allocated += 1
                self.max_buffers = max(self.max_buffers, self._allocated)
                return bytearray(size)
            self._reap(block=True)

    def _reap(self, *, block: bool) -> None:
        """Collect finished uploads, returning their buffers to the pool; raise the first failure."""
        if not self._inflight:
            return
        done, _ = cf.wait(list(self._inflight), timeout=None if block else 0, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            number, buf = self._inflight.pop(fut)
            self._free.append(buf)
            exc = fut.exception()
            if exc is not None:
                self._failed = self._failed or exc
                continue
            self._parts.append({"PartNumber": number, "ETag": fut.result()["ETag"]})
        if self._failed is not None:
            raise self._fail(f"uploading a part of {self.path}", self._failed)

    def write(self, data: Any) -> int:
        if self.closed or self._finished:
            raise ValueError("write to a closed S3 writer")
        if self._failed is not None:
            raise self._fail(f"uploading {self.path}", self._failed)
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            if self._buf is None:
                self._buf, self._fill = self._take_buffer(), 0
            take = min(len(view), len(self._buf) - self._fill)
            self._buf[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == len(self._buf):
                if self._upload_id is None and len(self._held) + 1 < self.window_parts:
                    self._held.append(self._buf)  # may still go up as one PUT
                else:
                    for held in self._held:
                        self._send_part(held)
                    self._held = []
                    self._send_part(self._buf)
                self._buf = None
        self._pos += n
        return n

    def _send_part(self, buf: bytearray) -> None:
        try:
            if self._upload_id is None:
                mpu = _call(self.fs, "create_multipart_upload", Bucket=self.bucket, Key=self.key)
                self._upload_id = mpu["UploadId"]
            self._submit_part(buf, buf)
        except CheckpointError:
            raise
        except Exception as exc:
            raise self._fail(f"starting the upload of {self.path}", exc) from exc
        self._reap(block=False)

    def _submit_part(self, data: Any, buf: bytearray) -> None:
        """Start uploading ``data`` as the next part; ``buf`` returns to the pool when it is done."""
        number, self._next_part = self._next_part, self._next_part + 1
        body = BufferReader(data)  # a stream: botocore/aiohttp then make no whole-part copies
        fut = _run(
            self.fs,
            self.fs._call_s3(
                "upload_part",
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=body,
            ),
        )
        self._inflight[fut] = (number, buf)

    # ----- finishing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Send the rest and complete the upload (one PUT for a small object)."""
        if self.closed:
            return
        try:
            if not self._finished:
                self._complete()
        finally:
            self._release()
            super().close()

    def _complete(self) -> None:
        self._finished = True
        if self._failed is not None:
            raise self._fail(f"uploading {self.path}", self._failed)
        tail = memoryview(self._buf)[: self._fill] if self._buf is not None else memoryview(b"")
        try:
            if self._upload_id is None:  # one PUT, streamed from the held parts and the tail (no joined copy)
                body = ChainReader([*self._held, tail])
                _call(self.fs, "put_object", Bucket=self.bucket, Key=self.key, Body=body, ContentLength=len(body))
            else:
                rest = bytes(tail)  # the filling buffer returns to the pool
                if rest:
                    self._submit_part(rest, bytearray())
                while self._inflight:
                    self._reap(block=True)
                parts = sorted(self._parts, key=lambda p: p["PartNumber"])
                _call(
                    self.fs,
                    "complete_multipart_upload",
                    Bucket=self.bucket,
                    Key=self.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
                self._upload_id = None
        except CheckpointError:
            raise
        except Exception as exc:
            raise self._fail(f"uploading {self.path}", exc) from exc
        finally:
            self._buf = None
            self._held = []
            self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Abandon the object: abort the multipart upload, nothing becomes visible."""
        if self.closed:
            return
        self._finished = True
        try:
            self._abort()
        finally:
            self._release()
            super().close()

    def _fail(self, what: str, exc: BaseException) -> StorageError:
        self._finished = True
        self._abort()
        if isinstance(exc, StorageError):
            return exc
        return StorageError(f"{what} failed (upload aborted): {type(exc).__name__}: {exc}")

    def _abort(self) -> None:
        for fut in list(self._inflight):
            fut.cancel()
        if self._inflight:
            cf.wait(list(self._inflight), timeout=60)
        self._inflight.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                _call(self.fs, "abort_multipart_upload", Bucket=self.bucket, Key=self.key, UploadId=upload_id)
            except Exception as exc:  # the original failure matters more
                log.warning("could not abort the multipart upload of %s: %s", self.path, exc)

    def _release(self) -> None:
        self._free.clear()
        self._held = []
        self._buf = None
        self._allocated = 0

    def __del__(self) -> None:
        if not self.closed:  # dropped without close(): never commit a possibly partial object
            try:
                self.discard()
            except Exception:
                pass

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.discard()  # a failed writer never commits a partial object
        else:
            self.close()


# ----- reading ------------------------------------------------------------------------------------
async def _get_into(fs: Any, bucket: str, key: str, view: memoryview, start: int, ranged: bool) -> None:
    """One GET of ``len(view)`` bytes at ``start``, streamed into ``view`` (no joined copy)."""
    kw: dict[str, Any] = {}
    if ranged:
        kw["Range"] = f"bytes={start}-{start + len(view) - 1}"
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **kw)
    body = resp["Body"]
    pos = 0
    try:
        while pos < len(view):
            chunk = await body.read(min(_READ_CHUNK, len(view) - pos))
            if not chunk:
                break
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        if pos != len(view) or await body.read(1):
            raise SizeMismatch(
                f"s3://{bucket}/{key}: expected {len(view)} bytes at {start}; the object differs in size"
            )
    finally:
        body.close()


def fetch(fs: Any, path: str, size: int, *, concurrency: int | None = None) -> bytearray:
    """The whole object at ``path`` (of known ``size``) in one preallocated buffer.

    ``concurrency`` > 1 splits it into that many ranged GETs running at once (fast on
    AWS; on moto each ranged GET costs the server a read of the whole object).
    """
    bucket, key, _ = fs.split_path(path)
    buf = bytearray(size)
    view = memoryview(buf)
    n = max(1, min(int(concurrency or READ_CONCURRENCY), max(1, size // (8 * MiB))))
    step = -(-size // n) if size else 0

    async def run() -> None:
        if n == 1:
            await _get_into(fs, bucket, key, view, 0, False)
        else:
            await asyncio.gather(
                *(_get_into(fs, bucket, key, view[o : o + step], o, True) for o in range(0, size, step))
            )

    try:
        _run(fs, run()).result()
    except (CheckpointError, FileNotFoundError):
        raise
    except Exception as exc:
        if "InvalidRange" in str(exc) or "416" in str(exc):  # shorter than recorded
            raise SizeMismatch(f"s3://{bucket}/{key} is shorter than {size} bytes") from exc
        raise StorageError(f"reading s3://{bucket}/{key} failed: {type(exc).__name__}: {exc}") from exc
    return buf


class ChainReader(io.RawIOBase):
    """A seekable reader over several bytes-like segments in a row, without joining them."""

    def __init__(self, segments: list[Any]) -> None:
        super().__init__()
        self._segs = [memoryview(s).cast("B") for s in segments]
        self._segs = [s for s in self._segs if len(s)]
        self._starts: list[int] = []
        total = 0
        for seg in self._segs:
            self._starts.append(total)
            total += len(seg)
        self._size = total
        self._pos = 0

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        done = 0
        while done < len(out) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            seg, off = self._segs[i], self._pos - self._starts[i]
            n = min(len(out) - done, len(seg) - off)
            out[done : done + n] = seg[off : off + n]
            done += n
            self._pos += n
        return done

    def read(self, size: int | None = -1) -> bytes:
        left = max(0, self._size - self._pos)
        n = left if size is None or size < 0 else min(size, left)
        if n == 0:
            return b""
        i = bisect.bisect_right(self._starts, self._pos) - 1
        seg, off = self._segs[i], self._pos - self._starts[i]
        if off + n <= len(seg):  # within one segment: one copy, straight out of it
            self._pos += n
            return bytes(seg[off : off + n])
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf[:got]) if got < n else bytes(buf)


class BufferReader(ChainReader):
    """A seekable reader over one bytes-like object without copying it (unlike ``BytesIO(bytearray)``)."""

    def __init__(self, data: Any) -> None:
        super().__init__([data])
