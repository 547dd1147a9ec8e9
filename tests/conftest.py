"""Shared fixtures: one parametrized ``backend`` over local disk, ``memory://``, S3, Azure Blob and GCS.

Every server runs on 127.0.0.1, once per test run, with a fresh bucket/container per test:

* S3: moto's ``ThreadedMotoServer`` (conditional PUTs made atomic, ``moto_s3.py``);
* Azure Blob: azurite (``servers/azurite.py``; the npm package from package.json, or
  ``$TORCHCKPT_AZURITE_BLOB``); a missing azurite FAILS the Azure tests, it never skips them;
* GCS: gcp-storage-emulator extended to honour ``ifGenerationMatch`` like GCS
  (``servers/gcs.py``); the emulator as shipped (``preconditions=False``) is the
  server that ignores conditional writes, for the probe tests.
"""

from __future__ import annotations

import os

# gcsfs reads this at import: its zonal-bucket gRPC probe waits 60 s per call on an emulator
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


@dataclass
class Backend:
    """Where a test's checkpoints live and how to reach them."""

    kind: str
    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def manager(self, **kwargs: Any) -> Any:
        from torchckpt import CheckpointManager

        return CheckpointManager(self.url, storage_options=self.storage_options or None, **kwargs)

    def cli_options(self) -> list[str]:
        """``--storage-option KEY=VALUE`` arguments for the CLI (dotted keys for nested dicts)."""
        import json

        def flat(prefix: str, value: Any) -> list[str]:
            if isinstance(value, dict):
                return [a for k, v in value.items() for a in flat(f"{prefix}{k}.", v)]
            return ["--storage-option", f"{prefix[:-1]}={json.dumps(value)}"]

        return flat("", self.storage_options)

    def sub(self, name: str) -> Backend:
        return Backend(self.kind, f"{self.url.rstrip('/')}/{name}", self.storage_options, self.env)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto_s3 import start_server

    server, endpoint = start_server()
    yield endpoint
    server.stop()


def make_bucket(endpoint: str) -> str:
    import boto3

    name = f"t-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_backend(s3_endpoint: str) -> Backend:
    bucket = make_bucket(s3_endpoint)
    return Backend(
        "s3",
        f"s3://{bucket}/run",
        {"client_kwargs": {"endpoint_url": s3_endpoint}},
        {"AWS_ENDPOINT_URL": s3_endpoint},
    )


@pytest.fixture
def local_backend(tmp_path: Any) -> Backend:
    return Backend("local", str(tmp_path / "ckpt"))


@pytest.fixture
def memory_backend() -> Iterator[Backend]:
    name = f"/t-{uuid.uuid4().hex[:12]}"
    yield Backend("memory", f"memory://{name}")
    import fsspec

    fs = fsspec.filesystem("memory")
    if fs.exists(name):
        fs.rm(name, recursive=True)


@pytest.fixture(scope="session")
def azurite_server() -> Iterator[Any]:
    from servers.azurite import AzuriteServer

    with AzuriteServer() as server:
        yield server


@pytest.fixture
def azure_backend(azurite_server: Any) -> Iterator[Backend]:
    with azurite_server.container() as container:
        yield Backend("azure", f"az://{container}/run", azurite_server.storage_options())


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[Any]:
    """The GCS emulator, extended to honour generation preconditions like GCS does."""
    from servers.gcs import GCSEmulator

    with GCSEmulator(preconditions=True) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def gcs_server_ignoring_preconditions() -> Iterator[Any]:
    """The GCS emulator as shipped: it accepts ``ifGenerationMatch`` and ignores it."""
    from servers.gcs import GCSEmulator

    with GCSEmulator(preconditions=False) as emulator:
        yield emulator


def gcs_backend_on(emulator: Any) -> Iterator[Backend]:
    with emulator.bucket() as bucket:
        yield Backend("gcs", f"gs://{bucket}/run", emulator.storage_options())


@pytest.fixture
def gcs_backend(gcs_server: Any) -> Iterator[Backend]:
    yield from gcs_backend_on(gcs_server)


@pytest.fixture
def gcs_ignoring_backend(gcs_server_ignoring_preconditions: Any) -> Iterator[Backend]:
    yield from gcs_backend_on(gcs_server_ignoring_preconditions)


@pytest.fixture(params=["local", "memory", "s3", "azure", "gcs"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every backend-independent behaviour runs on all five."""
    return request.getfixturevalue(f"{request.param}_backend")
