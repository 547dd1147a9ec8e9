"""The ``torchckpt`` command line: exit codes, ``--json``, one-line errors.

Cron-style cases run ``python -m torchckpt`` in a subprocess (local folder and
S3 through moto, endpoint only from ``AWS_ENDPOINT_URL``); the many small option
cases use click's ``CliRunner`` in-process, since every subprocess pays torch's
start-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from torchckpt import CheckpointManager
from torchckpt.cli import cli, parse_duration, parse_storage_options


def make_versions(mgr: CheckpointManager, losses: list[float]) -> list[Any]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1))
    return [mgr.save((i + 1) * 10, epoch=i + 1, model=net, metrics={"val_loss": loss}) for i, loss in enumerate(losses)]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Exactly what a cron job does: a fresh interpreter, arguments, exit code, stdout/stderr."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("TORCHCKPT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "torchckpt", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def assert_one_line_error(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("torchckpt: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def corrupt(mgr: CheckpointManager, info: Any) -> None:
    rel = f"versions/{info.version}/state.pt"
    data = bytearray(mgr.storage.read_bytes(rel))
    data[len(data) // 2] ^= 0xFF
    mgr.storage.fs.pipe_file(mgr.storage.path(rel), bytes(data))


# ----- parsers ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("30m", 1800),
        ("6h", 21600),
        ("7d", 604800),
        ("1h30m", 5400),
        ("45", 45),
        ("1.5h", 5400),
        ("2w", 1209600),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "6x", "-1h", "6h junk", "1h 2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_storage_options_nest_and_parse_json() -> None:
    opts = parse_storage_options(
        [
            "client_kwargs.endpoint_url=http://127.0.0.1:9000",
            "anon=false",
            "config_kwargs.retries.max_attempts=5",
            "key=abc",
            'secret="123"',
            "client_kwargs.region_name=eu-west-1",
        ]
    )
    assert opts == {
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"},
        "anon": False,
        "config_kwargs": {"retries": {"max_attempts": 5}},
        "key": "abc",
        "secret": "123",
    }
    for bad in (["novalue"], ["=x"], ["a..b=1"], ["a=1", "a.b=2"]):
        with pytest.raises(ValueError):
            parse_storage_options(bad)


# ----- usage errors: exit 2, one line ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (["prune", "{root}"], "at least one rule"),
        (["prune", "{root}", "--keep-interval", "6x"], "bad duration"),
        (["prune", "{root}", "--keep-best", "2"], "metric"),
        (["prune", "{root}", "--keep-last", "0"], "keep_last"),
        (["prune", "{root}", "--keep-last", "two"], "two"),
        (["prune", "{root}", "--keep-last", "1", "--mode", "avg"], "avg"),
        (["list", "{root}", "--storage-option", "novalue"], "KEY=VALUE"),
        (["list", "{root}", "--bogus"], "--bogus"),
        (["show", "{root}", "best"], "--metric"),
        (["gc", "{root}", "--older-than", "soon"], "bad duration"),
        (["frobnicate"], "frobnicate"),
        (["list"], "ROOT"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    root = tmp_path / "ck"
    make_versions(CheckpointManager(root), [0.5])
    result = invoke(*[a.format(root=root) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert_one_line_error(result.stderr, needle)


def test_help_and_version() -> None:
    result = invoke("--help")
    assert result.exit_code == 0 and "copy" in result.stdout and "demo" in result.stdout
    assert invoke("prune", "--help").exit_code == 0
    assert invoke("--version").exit_code == 0
    assert invoke().exit_code == 2  # bare command: help on stderr, usage exit code


# ----- operations in-process ---------------------------------------------------------------------------
def test_list_marks_latest_and_best(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    infos = make_versions(CheckpointManager(root), [0.9, 0.2, 0.5])
    CheckpointManager(root).pin(infos[0])
    result = invoke("list", str(root), "--metric", "val_loss")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["ID", "STEP", "EPOCH", "CREATED", "SIZE"]
    assert "PINNED" in lines[0] and "EXPORTS" in lines[0]
    by_id = {line.split()[0]: line for line in lines[1:4]}
    assert by_id[infos[1].version].rstrip().endswith("best")
    assert by_id[infos[2].version].rstrip().endswith("latest")
    assert "yes" in by_id[infos[0].version].split() and "val_loss=0.9" in by_id[infos[0].version]
    assert "3 version(s)" in lines[-1]

    doc = json.loads(invoke("list", str(root), "--json", "--metric", "val_loss", "--mode", "max").stdout)
    assert doc["latest"] == infos[2].version and doc["best"] == infos[0].version
    assert [v["id"] for v in doc["versions"]] == [i.version for i in infos]
    assert doc["versions"][0]["pinned"] is True and doc["versions"][0]["best"] is True
    assert invoke("list", str(root), "-q").stdout.split() == [i.version for i in infos]


def test_show_record_and_tensors(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    infos = make_versions(CheckpointManager(root), [0.9, 0.2])
    doc = json.loads(invoke("show", str(root), "10", "--json").stdout)  # a step number selects too
    assert doc["version"]["id"] == infos[0].version and doc["version"]["step"] == 10
    tensors = {t["name"]: t for t in doc["tensors"]}
    assert tensors["model.0.weight"]["shape"] == [4, 8] and tensors["model.0.weight"]["dtype"] == "float32"
    text = invoke("show", str(root), "best", "--metric", "val_loss").stdout
    assert infos[1].version in text and "model.2.weight" in text and "1x4" in text and "state.pt" in text
    assert "tensors:" not in invoke("show", str(root), "--no-tensors").stdout
    missing = invoke("show", str(root), "nosuchversion")
    assert missing.exit_code == 1
    assert_one_line_error(missing.stderr, "nosuchversion", infos[0].version)


def test_prune_dry_run_then_for_real(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    infos = make_versions(CheckpointManager(root), [0.1, 0.9, 0.8, 0.7, 0.6])
    dry = json.loads(
        invoke(
            "prune", str(root), "--keep-last", "2", "--keep-best", "1", "--metric", "val_loss", "--dry-run", "--json"
        ).stdout
    )
    assert dry["dry_run"] is True
    assert [v["id"] for v in dry["removed"]] == [infos[1].version, infos[2].version]
    assert len(CheckpointManager(root).list()) == 5
    result = invoke("prune", str(root), "--keep-last", "2", "--keep-best", "1", "--metric", "val_loss")
    assert result.exit_code == 0
    assert f"removed {infos[1].version}" in result.stdout and "removed 2 version(s)" in result.stdout
    assert [v.version for v in CheckpointManager(root).list()] == [infos[0].version, infos[3].version, infos[4].version]
    assert invoke("prune", str(root), "--keep-last", "1", "-q").stdout == ""
    assert [v.version for v in CheckpointManager(root).list()] == [infos[4].version]


def test_prune_keep_interval_and_every_n_steps(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    infos = make_versions(CheckpointManager(root), [0.5, 0.5, 0.5, 0.5])
    doc = json.loads(invoke("prune", str(root), "--keep-every-n-steps", "20", "--json").stdout)
    assert {v["id"] for v in doc["removed"]} == {infos[0].version, infos[2].version}
    doc = json.loads(invoke("prune", str(root), "--keep-interval", "7d", "--dry-run", "--json").stdout)
    assert len(doc["kept"]) >= 1 and len(doc["removed"]) <= 1  # same week (or two at a boundary)


def test_pin_unpin_delete(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    infos = make_versions(CheckpointManager(root), [0.3, 0.2, 0.1])
    assert json.loads(invoke("pin", str(root), infos[0].version, "--json").stdout) == {"pinned": [infos[0].version]}
    refused = invoke("delete", str(root), infos[0].version)
    assert refused.exit_code == 1
    assert_one_line_error(refused.stderr, "pinned")
    assert invoke("prune", str(root), "--keep-last", "1").exit_code == 0
    assert [v.version for v in CheckpointManager(root).list()] == [infos[0].version, infos[2].version]
    assert invoke("unpin", str(root), infos[0].version).exit_code == 0
    result = invoke("delete", str(root), infos[0].version)
    assert result.exit_code == 0 and f"deleted {infos[0].version}" in result.stdout
    assert [v.version for v in CheckpointManager(root).list()] == [infos[2].version]
    assert not (root / "versions" / infos[0].version).exists()


def test_verify_gc_repair(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    mgr = CheckpointManager(root)
    infos = make_versions(mgr, [0.3, 0.2])
    ok = invoke("verify", str(root), "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout) == {
        "ok": True,
        "checked": [i.version for i in infos],
        "problems": [],
    }
    corrupt(mgr, infos[0])
    bad = invoke("verify", str(root))
    assert bad.exit_code == 1 and f"FAILED  {infos[0].version}: state.pt: checksum" in bad.stdout
    assert f"ok      {infos[1].version}" in bad.stdout
    assert invoke("verify", str(root), infos[1].version).exit_code == 0
    assert invoke("verify", str(root), infos[0].version, "-q").stdout.startswith("FAILED")

    leftover = root / "versions" / ".tmp-20200101T000000.000000Z-step000001-abcdef-123456"
    leftover.mkdir()
    (leftover / "state.pt").write_bytes(b"partial")
    fresh = root / "versions" / ".tmp-29990101T000000.000000Z-step000001-abcdef-123456"
    fresh.mkdir()
    gc = json.loads(invoke("gc", str(root), "--older-than", "1h", "--json").stdout)
    assert len(gc["removed"]) == 1 and gc["removed"][0].endswith(leftover.name)
    assert not leftover.exists() and fresh.exists()

    (root / "manifest.json").write_text("{not json")
    broken = invoke("list", str(root))
    assert broken.exit_code == 1
    assert_one_line_error(broken.stderr, "torchckpt repair")
    repaired = invoke("repair", str(root), "--json")
    assert repaired.exit_code == 0 and json.loads(repaired.stdout)["versions"] == [i.version for i in infos]
    assert invoke("list", str(root), "-q").stdout.split() == [i.version for i in infos]


def test_missing_root_is_an_error_and_not_created(tmp_path: Path) -> None:
    root = tmp_path / "typo"
    for cmd in ("list", "prune", "gc"):
        extra = ["--keep-last", "1"] if cmd == "prune" else []
        result = invoke(cmd, str(root), *extra)
        assert result.exit_code == 1
        assert_one_line_error(result.stderr, "does not exist")
    assert not root.exists()
    (tmp_path / "afile").write_text("x")
    result = invoke("list", str(tmp_path / "afile"))
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "is a file")


def test_empty_root(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no versions" in invoke("list", str(tmp_path / "empty")).stdout
    assert json.loads(invoke("list", str(tmp_path / "empty"), "--json").stdout)["versions"] == []
    assert invoke("verify", str(tmp_path / "empty")).exit_code == 0


def test_s3_in_process_with_storage_option(s3_backend: Any) -> None:
    """The endpoint given as a dotted --storage-option (no AWS_ENDPOINT_URL)."""
    infos = make_versions(s3_backend.manager(), [0.4, 0.3])
    endpoint = s3_backend.storage_options["client_kwargs"]["endpoint_url"]
    env: dict[str, Any] = {"AWS_ENDPOINT_URL": None, "AWS_ENDPOINT_URL_S3": None}
    doc = json.loads(
        invoke("list", s3_backend.url, "-o", f"client_kwargs.endpoint_url={endpoint}", "--json", env=env).stdout
    )
    assert [v["id"] for v in doc["versions"]] == [i.version for i in infos]
    assert doc["versions"][0]["url"].startswith("s3://")
    bucket = s3_backend.url.split("/")[2]
    nobucket = invoke("list", s3_backend.url.replace(bucket, bucket + "-missing"), env=s3_backend.env)
    assert nobucket.exit_code == 1
    assert_one_line_error(nobucket.stderr, "does not exist")


# ----- cron-style: a real subprocess --------------------------------------------------------------------
def test_cron_local(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    mgr = CheckpointManager(root)
    infos = make_versions(mgr, [0.5, 0.4, 0.3, 0.2])

    listed = run_cli("list", str(root), "--json")
    assert listed.returncode == 0, listed.stderr
    assert [v["id"] for v in json.loads(listed.stdout)["versions"]] == [i.version for i in infos]

    pruned = run_cli("prune", str(root), "--keep-last", "2", "--json")
    assert pruned.returncode == 0, pruned.stderr
    assert [v["id"] for v in json.loads(pruned.stdout)["removed"]] == [infos[0].version, infos[1].version]

    corrupt(mgr, infos[3])
    bad = run_cli("verify", str(root), "--json")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert json.loads(bad.stdout)["problems"][0]["version"] == infos[3].version

    usage = run_cli("prune", str(root), "--keep-interval", "often")
    assert usage.returncode == 2
    assert_one_line_error(usage.stderr, "bad duration")


def test_cron_s3_endpoint_from_env(s3_backend: Any) -> None:
    mgr = s3_backend.manager()
    infos = make_versions(mgr, [0.5, 0.1, 0.3])
    env = s3_backend.env  # AWS_ENDPOINT_URL only: no storage option on the command line

    listed = run_cli("list", s3_backend.url, "--json", "--metric", "val_loss", env=env)
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert doc["best"] == infos[1].version and doc["latest"] == infos[2].version

    pruned = run_cli(
        "prune", s3_backend.url, "--keep-last", "1", "--keep-best", "1", "--metric", "val_loss", "--json", env=env
    )
    assert pruned.returncode == 0, pruned.stderr
    assert [v["id"] for v in json.loads(pruned.stdout)["removed"]] == [infos[0].version]
    assert not mgr.storage.exists(f"versions/{infos[0].version}/state.pt")

    corrupt(mgr, infos[1])
    bad = run_cli("verify", s3_backend.url, env=env)
    assert bad.returncode == 1 and f"FAILED  {infos[1].version}" in bad.stdout and "Traceback" not in bad.stderr
