"""Hostile and bad input: checkpoints from someone else, tampered indexes, broken storage, bad CLI use.

(Malicious export archives are covered in test_export.py; odd version ids per API
call in test_selectors.py.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from _writer import tensors_for
from torchckpt import CheckpointManager, ManifestError, RetentionPolicy, UnsafeCheckpointError
from torchckpt import manifest as mf
from torchckpt.cli import cli
from torchckpt.hashing import checksum_bytes


class Evil:
    """Unpickling this creates a folder: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.makedirs, (self.marker,))


def rewrite_record(mgr: CheckpointManager, version: str, edit: Any) -> None:
    """Tamper with a version's record consistently in meta.json and in the manifest (as an attacker would)."""
    rel = f"versions/{version}/meta.json"
    meta = json.loads(mgr.storage.read_bytes(rel))
    edit(meta)
    mgr.storage.write_bytes(rel, json.dumps(meta).encode())
    doc = json.loads(mgr.storage.read_bytes(mf.MANIFEST))
    for rec in doc["versions"]:
        if rec["id"] == version:
            edit(rec)
    mgr.storage.write_bytes(mf.MANIFEST, json.dumps(doc).encode())


# ----- a malicious pickle in a state file ---------------------------------------------------------------
def test_malicious_state_file_runs_no_code(backend: Any, tmp_path: Path) -> None:
    mgr = backend.manager()
    mgr.save(1, model=tensors_for(1))
    bad = mgr.save(2, model=tensors_for(2))
    marker = tmp_path / "pwned"
    import io

    buf = io.BytesIO()
    torch.save({"torchckpt": 1, "objects": {"model": Evil(str(marker))}, "extra": {}, "rng": {}}, buf)
    data = buf.getvalue()
    mgr.storage.write_bytes(f"versions/{bad.version}/state.pt", data)

    def fix(rec: dict[str, Any]) -> None:
        rec["files"]["state.pt"] = {"size": len(data), "checksum": checksum_bytes(data)}

    rewrite_record(mgr, bad.version, fix)
    assert mgr.verify().ok  # the checksums match: only the content is hostile
    calls = [
        lambda: mgr.load(),
        lambda: mgr.load(verify=False),
        lambda: mgr.restore(model={}),
        lambda: mgr.restore(fallback=True, model={}),  # refused, not silently skipped
    ]
    for call in calls:
        with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):
            call()
    show = CliRunner().invoke(cli, ["show", backend.url, bad.version, *cli_options(backend)])
    assert show.exit_code == 1 and "Traceback" not in show.output
    assert not marker.exists()
    assert mgr.load(1)["model"]["w"].equal(tensors_for(1)["w"])


# ----- indexes that point outside the root -----------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value",
    [
        ("id", "../../etc"),
        ("id", "/etc/passwd"),
        ("files", {"../../manifest.json": {"size": 1, "checksum": "x"}}),
        ("files", {"../../../../etc/passwd": {"size": 1, "checksum": "x"}}),
        ("files", {"sub/state.pt": {"size": 1, "checksum": "x"}}),
        ("exports", {"../../versions": {"size": 1}}),
    ],
)
def test_records_cannot_point_outside_their_folder(backend: Any, field: str, value: Any) -> None:
    mgr = backend.manager()
    good = mgr.save(1, model=tensors_for(1))
    victim = mgr.save(2, model=tensors_for(2))
    doc = json.loads(mgr.storage.read_bytes(mf.MANIFEST))
    doc["versions"][1][field] = value
    mgr.storage.write_bytes(mf.MANIFEST, json.dumps(doc).encode())
    calls = (
        mgr.list,
        mgr.load,
        mgr.verify,
        mgr.gc,
        lambda: mgr.delete(good.version),
        lambda: mgr.prune(RetentionPolicy(keep_last=1)),
        lambda: mgr.save(3, model=tensors_for(3)),
    )
    for call in calls:
        with pytest.raises(ManifestError, match="torchckpt repair"):
            call()
    assert mgr.storage.exists(mf.MANIFEST) and mgr.storage.exists(f"versions/{good.version}/state.pt")
    # the save above committed its data before the index update failed: repair lists it too
    assert [v.step for v in mgr.repair()] == [1, 2, 3]
    assert [v.version for v in mgr.list()][:2] == [good.version, victim.version]
    assert mgr.verify().ok


def test_meta_json_naming_outside_paths_is_not_trusted(backend: Any) -> None:
    mgr = backend.manager()
    good = mgr.save(1, model=tensors_for(1))
    rel = f"versions/{good.version}/meta.json"
    meta = json.loads(mgr.storage.read_bytes(rel))
    meta["files"] = {"../../manifest.json": meta["files"]["state.pt"]}
    mgr.storage.write_bytes(rel, json.dumps(meta).encode())
    report = mgr.verify()
    assert not report.ok and "meta.json" in report.problems[0][1]
    mgr.storage.write_bytes(mf.MANIFEST, b"{}")  # lose the index too: repair must not list the bad record
    assert mgr.repair() == []
    assert mgr.storage.exists(mf.MANIFEST)


@pytest.mark.parametrize("content", [b'{"format_version": 2, "generation": 1, "versions": []}', b"{not json", b""])
def test_newer_or_invalid_manifest(backend: Any, content: bytes) -> None:
    mgr = backend.manager()
    info = mgr.save(1, model=tensors_for(1))
    mgr.storage.write_bytes(mf.MANIFEST, content)
    with pytest.raises(ManifestError, match="torchckpt repair") as err:
        mgr.list()
    if b"format_version" in content:
        assert "format_version 2" in str(err.value) and "upgrade torchckpt" in str(err.value)
    result = CliRunner().invoke(cli, ["list", backend.url, *cli_options(backend)])
    assert result.exit_code == 1 and "torchckpt repair" in result.stderr and "Traceback" not in result.output
    assert [v.version for v in mgr.repair()] == [info.version]


# ----- storage that cannot be reached: StorageError, in bounded time ---------------------------------------
PROBE = textwrap.dedent(
    """
    import json, sys
    from torchckpt import CheckpointManager, StorageError
    for url, endpoint in json.loads(sys.argv[1]):
        try:
            CheckpointManager(url, storage_options={"client_kwargs": {"endpoint_url": endpoint}}).list()
            print(json.dumps([url, "no error", ""]))
        except StorageError as exc:
            print(json.dumps([url, "StorageError", str(exc)]))
        except BaseException as exc:
            print(json.dumps([url, type(exc).__name__, str(exc)]))
    """
)


def probe(cases: list[tuple[str, str]], env: dict[str, str]) -> list[list[str]]:
    # the timeout is a hang detector (a hang would be an IMDS lookup or endless retries), not a benchmark
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=150
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: connections are refused


def test_unreachable_endpoint_and_missing_bucket(s3_endpoint: str) -> None:
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true"}
    env.pop("AWS_ENDPOINT_URL", None)
    results = probe(
        [("s3://some-bucket/run", f"http://127.0.0.1:{closed_port()}"), ("s3://no-such-bucket-here/run", s3_endpoint)],
        env,
    )
    assert [r[1] for r in results] == ["StorageError", "StorageError"], results
    assert "no-such-bucket-here" in results[1][2]


def test_missing_credentials(s3_backend: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",  # no instance-metadata lookup (it would wait for a timeout)
        AWS_DEFAULT_REGION="us-east-1",
    )
    endpoint = s3_backend.storage_options["client_kwargs"]["endpoint_url"]
    results = probe([(s3_backend.url, endpoint)], env)
    assert results[0][1] == "StorageError", results
    assert "credential" in results[0][2].lower(), results


# ----- the CLI: every command, bad root / version / option -> non-zero, one line, no traceback -------------
def cli_options(backend: Any) -> list[str]:
    return list(backend.cli_options())


def bad_invocations(root: str, file_root: str, missing: str, s3_missing: list[str]) -> list[list[str]]:
    cases: list[list[str]] = []
    versioned = {"show": [], "delete": [], "pin": [], "unpin": [], "verify": []}
    plain = {"list": [], "gc": [], "repair": [], "prune": ["--keep-last", "1"]}
    for cmd, extra in {**plain, **versioned}.items():
        version = ["latest"] if cmd in versioned else []
        for bad_root in (missing, file_root, "nosuchproto://x/y"):
            cases.append([cmd, bad_root, *version, *extra])
        cases.append([cmd, *s3_missing[:1], *version, *extra, *s3_missing[1:]])
        cases.append([cmd, root, *version, *extra, "--bogus-option"])
        if cmd in versioned:
            for bad_version in ("../etc", "/etc/passwd", "a/b", "no-such-version", "99999", "a b"):
                cases.append([cmd, root, bad_version, *extra])
    cases += [
        ["copy", missing, root],
        ["copy", root, file_root],
        ["copy", root, root + "-copy", "../etc"],
        ["copy", root, root + "-copy", "no-such-version"],
        ["copy", root, root + "-copy", "--bogus-option"],
        ["copy", *s3_missing[:1], root, *s3_missing[1:]],
        ["demo", file_root],
        ["demo", root, "--bogus-option"],
        ["gc", root, "--older-than", "soon"],
        ["prune", root, "--keep-last", "0"],
        ["prune", root, "--keep-last", "x"],
        ["prune", root],
        ["list", root, "--storage-option", "novalue"],
    ]
    return cases


def test_every_cli_command_fails_cleanly(tmp_path: Path, s3_backend: Any) -> None:
    root = str(tmp_path / "root")
    mgr = CheckpointManager(root)
    mgr.save(1, model=tensors_for(1))
    mgr.pin(1)
    file_root = tmp_path / "a-file"
    file_root.write_text("not a folder")
    endpoint = s3_backend.storage_options["client_kwargs"]["endpoint_url"]
    s3_missing = ["s3://no-such-bucket-cli/run", "--storage-option", f"client_kwargs.endpoint_url={endpoint}"]
    cases = bad_invocations(root, str(file_root), str(tmp_path / "missing"), s3_missing)
    assert len(cases) > 60
    failures = []
    for args in cases:
        result = CliRunner().invoke(cli, args)
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        ok = (
            result.exit_code in (1, 2)
            and isinstance(result.exception, SystemExit)  # not an escaped exception
            and len(lines) == 1
            and lines[0].startswith("torchckpt: error: ")
            and "Traceback" not in result.output
        )
        if not ok:
            failures.append(f"{args}: exit {result.exit_code}, {result.exception!r}, stderr={result.stderr!r}")
    assert not failures, "\n".join(failures)
    # nothing above changed the good root
    assert [v.step for v in mgr.list()] == [1] and mgr.info(1).pinned and mgr.verify().ok
    assert not (tmp_path / "missing").exists()


# ----- a malicious pickle in an export artifact -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["program", "torchscript"])
def test_malicious_export_artifact_runs_no_code(memory_backend: Any, tmp_path: Path, kind: str) -> None:
    """An artifact replaced by a pickle, its recorded checksum updated to match, is refused unrun."""
    import io

    import torchckpt

    net = torch.nn.Linear(4, 2)
    mgr = memory_backend.manager()
    info = mgr.save(1, model=net)
    if kind == "program":
        url, name = mgr.export_program(net, (torch.randn(1, 4),)), "model.pt2"
    else:
        url, name = mgr.export_torchscript(net), "model.pt"
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(Evil(str(marker)), buf)
    data = buf.getvalue()
    mgr.storage.write_bytes(f"exports/{info.version}/{name}", data)
    doc = json.loads(mgr.storage.read_bytes(mf.MANIFEST))
    doc["versions"][0]["exports"][name].update(size=len(data), checksum=checksum_bytes(data))
    mgr.storage.write_bytes(mf.MANIFEST, json.dumps(doc).encode())
    load = torchckpt.load_program if kind == "program" else torchckpt.load_torchscript
    with pytest.raises(Exception) as err:  # TorchScript: not loadable; torch.export: UnsafeCheckpointError
        load(url)
    assert isinstance(err.value, torchckpt.CheckpointError), repr(err.value)
    assert not isinstance(err.value, torchckpt.ChecksumMismatchError)  # refused for its content
    assert not marker.exists()
