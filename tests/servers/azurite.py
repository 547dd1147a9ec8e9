"""An azurite Blob service on 127.0.0.1 for the Azure (adlfs, ``az://`` / ``abfs://``) tests.

azurite is an npm package. The repository installs it locally (``package.json`` lists
``azurite`` and ``.ci/run`` runs ``npm ci`` in the repo root), so the binary is looked up as:

1. ``$TORCHCKPT_AZURITE_BLOB`` (an explicit path to ``azurite-blob``),
2. ``<repo>/node_modules/.bin/azurite-blob``,
3. ``azurite-blob`` on ``PATH``,
4. ``npx --no-install --offline -- azurite-blob`` run in the repo root (never downloads).

If none works, :class:`AzuriteNotInstalled` is raised: tests must fail loudly, not skip.

Usage::

    with AzuriteServer() as az:
        az.create_container("ckpt")
        fs = az.filesystem()                       # adlfs.AzureBlobFileSystem
        url = "az://ckpt/run-1"                    # with storage_options=az.storage_options()

Traps handled here:

* The current azure-storage-blob SDK sends an ``x-ms-version`` newer than azurite knows;
  without ``--skipApiVersionCheck`` every request fails with
  ``InvalidHeaderValue: The API version ... is not supported by Azurite``.
* ``--blobPort 0`` lets azurite pick a free port; the real port is read from its
  "successfully listens on http://127.0.0.1:PORT" line (no port-picking race).
* azurite is started in its own process group (npx spawns a child ``node``), and the
  whole group is stopped.
* adlfs with ``account_name``/``account_key`` only ever talks ``https://{account}.blob.core.windows.net``
  (or ``https://{account_host}``), so an http emulator needs ``connection_string``
  (it carries ``BlobEndpoint=http://127.0.0.1:PORT/devstoreaccount1``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

#: azurite's well-known development account (public, documented by Microsoft).
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

_LISTEN_RE = re.compile(r"successfully listens on https?://[^\s:]+:(\d+)")


class AzuriteNotInstalled(RuntimeError):
    """azurite's ``azurite-blob`` could not be found or started."""


class AzuriteError(RuntimeError):
    """azurite started but did not come up (or died)."""


def azurite_command() -> list[str]:
    """The command line prefix that runs ``azurite-blob``; raises :class:`AzuriteNotInstalled`."""
    explicit = os.environ.get("TORCHCKPT_AZURITE_BLOB")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise AzuriteNotInstalled(f"TORCHCKPT_AZURITE_BLOB={explicit!r} is not an executable file")
        return [explicit]
    local = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if os.access(local, os.X_OK):
        return [str(local)]
    on_path = shutil.which("azurite-blob")
    if on_path:
        return [on_path]
    npx = shutil.which("npx")
    if npx:
        try:
            probe = subprocess.run(
                [npx, "--no-install", "--offline", "--", "azurite-blob", "--version"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            probe_out = f"{type(exc).__name__}: {exc}"
        else:
            if probe.returncode == 0:
                return [npx, "--no-install", "--offline", "--", "azurite-blob"]
            probe_out = " / ".join((probe.stdout + probe.stderr).strip().splitlines()[:2])
    else:
        probe_out = "npx not on PATH"
    raise AzuriteNotInstalled(
        "azurite is not installed: the Azure tests need its Blob emulator. Run `npm ci` in "
        f"{REPO_ROOT} (package.json lists azurite), or `npm install azurite` somewhere and set "
        f"TORCHCKPT_AZURITE_BLOB to its node_modules/.bin/azurite-blob. (npx said: {probe_out})"
    )


def connection_string(endpoint: str, account_name: str = ACCOUNT_NAME, account_key: str = ACCOUNT_KEY) -> str:
    return f"DefaultEndpointsProtocol=http;AccountName={account_name};AccountKey={account_key};BlobEndpoint={endpoint};"


class AzuriteServer:
    """One azurite Blob service process, started by :meth:`start` (or ``with``) and stopped by :meth:`stop`.

    Args:
        host: address to listen on (loopback by default).
        port: 0 picks a free port.
        in_memory: ``--inMemoryPersistence`` (otherwise a temporary folder that is removed on stop).
        extent_memory_limit_mb: cap on in-memory blob data (azurite's default is half of RAM).
        startup_timeout: seconds to wait until the service answers.
        extra_args: more azurite command line arguments.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        in_memory: bool = True,
        extent_memory_limit_mb: int = 2048,
        startup_timeout: float = 60.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.requested_port = port
        self.in_memory = in_memory
        self.extent_memory_limit_mb = extent_memory_limit_mb
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._workdir: str | None = None
        self._log_path: str | None = None

    # ----- lifecycle --------------------------------------------------------------------------
    def start(self) -> AzuriteServer:
        if self._proc is not None:
            return self
        cmd = azurite_command()
        self._workdir = tempfile.mkdtemp(prefix="azurite-")
        self._log_path = os.path.join(self._workdir, "azurite.out")
        args = [
            *cmd,
            "--blobHost",
            self.host,
            "--blobPort",
            str(self.requested_port),
            "--skipApiVersionCheck",
            "--disableTelemetry",
            "--silent",
        ]
        if self.in_memory:
            # (azurite refuses --location together with --inMemoryPersistence; cwd is the temp dir)
            args += ["--inMemoryPersistence", "--extentMemoryLimit", str(self.extent_memory_limit_mb)]
        else:
            args += ["--location", self._workdir]
        args += list(self.extra_args)
        # npx resolves azurite-blob from the node_modules above its working directory.
        cwd = str(REPO_ROOT) if os.path.basename(cmd[0]) == "npx" else self._workdir
        with open(self._log_path, "wb") as log:
            try:
                self._proc = subprocess.Popen(
                    args,
                    cwd=cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: npx -> node children stop with it
                )
            except OSError as exc:
                shutil.rmtree(self._workdir, ignore_errors=True)
                raise AzuriteNotInstalled(f"cannot run {args[0]}: {exc}") from exc
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_text(self) -> str:
        try:
            with open(self._log_path or "", encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _wait_until_up(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while self.port is None:
            m = _LISTEN_RE.search(self._log_text())
            if m:
                self.port = int(m.group(1))
                break
            if self._proc.poll() is not None:
                raise AzuriteError(f"azurite exited with {self._proc.returncode}:\n{self._log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AzuriteError(
                    f"azurite did not start within {self.startup_timeout:g} s:\n{self._log_text()[-2000:]}"
                )
            time.sleep(0.1)
        # It said it listens; make sure it answers HTTP (any status code is an answer).
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=2).close()
                return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, OSError) as exc:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise AzuriteError(
                        f"azurite does not answer on {self.endpoint} ({exc}):\n{self._log_text()[-2000:]}"
                    ) from exc
                time.sleep(0.1)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session=True: the group id is the leader's pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            # Wait for the whole group (npx's node child outlives npx by a moment), then SIGKILL.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                proc.poll()
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self.port = None

    def __enter__(self) -> AzuriteServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ----- addresses and options ----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT/devstoreaccount1`` (path-style account, as azurite expects)."""
        if self.port is None:
            raise AzuriteError("azurite is not running")
        return f"http://{self.host}:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.endpoint)

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """``storage_options`` for ``fsspec``/adlfs (``az://container/prefix`` or ``abfs://...``)."""
        return {"connection_string": self.connection_string, **extra}

    def bad_credentials_options(self) -> dict[str, Any]:
        """Same endpoint, wrong account key: every request fails with 403 ``AuthenticationFailed``."""
        wrong = "A" * 86 + "=="
        return {"connection_string": connection_string(self.endpoint, account_key=wrong)}

    def filesystem(self, **extra: Any) -> Any:
        """A fresh (uncached) ``adlfs.AzureBlobFileSystem`` on this server."""
        from adlfs import AzureBlobFileSystem

        return AzureBlobFileSystem(skip_instance_cache=True, **self.storage_options(**extra))

    # ----- containers ---------------------------------------------------------------------------
    def _service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def create_container(self, name: str | None = None) -> str:
        """Create a container (a unique name if ``name`` is None) and return its name."""
        name = name or f"ckpt-{secrets.token_hex(4)}"
        with self._service() as svc:
            svc.create_container(name)
        return name

    def delete_container(self, name: str) -> None:
        """Delete a container and everything in it (missing is fine)."""
        from azure.core.exceptions import ResourceNotFoundError

        with self._service() as svc, contextlib.suppress(ResourceNotFoundError):
            svc.delete_container(name)

    def list_containers(self) -> list[str]:
        with self._service() as svc:
            return [c.name for c in svc.list_containers()]

    @contextlib.contextmanager
    def container(self, name: str | None = None) -> Iterator[str]:
        """A fresh container for one test, deleted afterwards."""
        name = self.create_container(name)
        try:
            yield name
        finally:
            self.delete_container(name)
