"""Shared fixtures: one parametrized ``root`` over local disk, ``memory://`` and real-protocol S3.

S3 is moto's ``ThreadedMotoServer`` on 127.0.0.1 (one server per test run, a fresh
bucket per test); s3fs talks HTTP to it exactly as it would to AWS.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

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

    def sub(self, name: str) -> "Backend":
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


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Every backend-independent behaviour runs on all three."""
    return request.getfixturevalue(f"{request.param}_backend")
