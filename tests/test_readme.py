"""The README's two set-up commands are what ``.ci/run`` runs, verbatim, and ``constraints.txt`` pins what they install.

``.ci/run`` runs the commands themselves on a clean venv with pip's cache off (a test that built venvs
would double CI's time); these checks keep the README, ``.ci/run``, ``pyproject.toml`` and the lock
from drifting apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


def _repo_root() -> Path:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / ".ci" / "run").is_file():
            return parent
    raise RuntimeError(f"no repository root above {__file__}")


ROOT = _repo_root()


def readme_commands() -> list[str]:
    """The set-up commands (``python3 -m venv ...``) in the README's ```bash blocks, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.startswith("python3 -m venv ")]


def ci_lines() -> list[str]:
    return [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def constraint_pins() -> dict[str, str]:
    """``constraints.txt`` as {normalized name: version}; every line must be an exact ``name==version`` pin."""
    pins: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        assert m, f"constraints.txt: {raw!r} is not an exact name==version pin"
        name = _normalize(m.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = m.group(2)
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_readme_has_the_demo_and_the_test_command() -> None:
    demo, tests = readme_commands()  # exactly two
    assert demo.endswith("&& torchckpt demo")
    assert tests.endswith("&& python -m pytest -q")
    for cmd in (demo, tests):
        assert "&& pip install torch==2.13.0 &&" in cmd  # the CPU wheel first: nothing may pull another torch
        assert "pip install -c constraints.txt -e " in cmd


def test_ci_runs_the_readme_commands_verbatim_in_order() -> None:
    lines = ci_lines()
    where = []
    for cmd in readme_commands():
        found = [i for i, line in enumerate(lines) if cmd in line]
        assert found, f".ci/run does not run the README's command verbatim:\n{cmd}"
        where.append(found[0])
    assert where == sorted(where), ".ci/run runs the README's commands out of order"
    first = where[0]
    assert any(line.startswith("export PIP_NO_CACHE_DIR=1") for line in lines[:first]), "pip's cache must be off"
    assert any(line.startswith("rm -rf .venv") for line in lines[:first]), "the README's commands need a clean .venv"


def test_constraints_pin_torch_as_the_readme_does() -> None:
    pins = constraint_pins()
    readme_torch = {m for cmd in readme_commands() for m in re.findall(r"pip install torch==(\S+)", cmd)}
    assert readme_torch == {pins["torch"]}
    assert not any(name.startswith("nvidia-") or name == "triton" for name in pins), "a CUDA build crept into the lock"


def test_constraints_pin_every_dependency_within_its_range() -> None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    requirements = pytest.importorskip("packaging.requirements")

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        declared += extra
    pins = constraint_pins()
    problems = []
    for text in declared:
        req = requirements.Requirement(text)
        name = _normalize(req.name)
        if name == _normalize(project["name"]):  # torchckpt[s3,...]: the extras are checked themselves
            continue
        if name not in pins:
            problems.append(f"{text}: not pinned in constraints.txt (re-lock: see its header)")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{text}: constraints.txt pins {pins[name]}")
    assert not problems, "\n".join(problems)


def test_the_lock_is_consistent() -> None:
    """Every pinned package (as installed at its pinned version) accepts the pins of what it requires.

    In particular the pinned aiobotocore accepts the pinned botocore, and so does the pinned boto3.
    """
    from importlib.metadata import PackageNotFoundError, requires, version

    requirements = pytest.importorskip("packaging.requirements")
    pins = constraint_pins()
    for name in ("fsspec", "s3fs", "aiobotocore", "botocore", "boto3", "moto"):
        assert name in pins, f"constraints.txt does not pin {name}"
    checked, problems = set(), []
    for name, pinned in pins.items():
        try:
            if version(name) != pinned:
                continue  # this environment was not installed from the lock: nothing to learn from its metadata
        except PackageNotFoundError:
            continue
        checked.add(name)
        for text in requires(name) or []:
            req = requirements.Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            target = _normalize(req.name)
            if target in pins and not req.specifier.contains(pins[target], prereleases=True):
                problems.append(f"{name}=={pinned} requires {text}, constraints.txt pins {target}=={pins[target]}")
    assert not problems, "\n".join(problems)
    if not {"aiobotocore", "boto3"} <= checked:
        pytest.skip("aiobotocore/boto3 are not installed at their pinned versions (install with -c constraints.txt)")


def test_npm_lock_matches_package_json() -> None:
    package = json.loads((ROOT / "package.json").read_text(encoding="utf-8"))
    lock = json.loads((ROOT / "package-lock.json").read_text(encoding="utf-8"))
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    for name, spec in package["dependencies"].items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", spec), f"package.json: {name} {spec!r} is not an exact version"
        assert lock["packages"][f"node_modules/{name}"]["version"] == spec
