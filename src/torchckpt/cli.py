"""The ``torchckpt`` command: list, inspect, verify, prune and copy versions from scripts.

Built on click. Exit codes are part of the contract (0 ok, 1 a check or an
operation failed, 2 usage error) and every expected error is one line on
stderr, so cron jobs and CI can rely on them. ``--json`` prints one JSON
document on stdout for machines.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from datetime import timedelta, timezone
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import click

from .errors import CheckpointError, CheckpointNotFoundError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# ----- parsing helpers ---------------------------------------------------------------------------------
def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``6h``, ``7d``, ``1w``, ``1h30m`` or plain seconds -> ``timedelta``."""
    raw = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(raw):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()]
        pos = m.end()
    if not raw or pos != len(raw):
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 30m, 6h, 7d (or 1h30m)")
    return timedelta(seconds=total)


def parse_storage_options(pairs: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs -> nested options; dotted keys nest, values are JSON when they parse."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"bad storage option {pair!r}: use KEY=VALUE, e.g. client_kwargs.endpoint_url=http://host:9000")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = options
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"storage option {key!r} conflicts with {part}={child!r}")
            node = child
        node[parts[-1]] = value
    return options


def parse_selector(text: str) -> str | int:
    """A VERSION argument: ``latest``, ``best``, a step number or a version id."""
    return int(text) if text.isdigit() else text


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: Any, ctx: Any) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = _Duration()


# ----- output helpers -----------------------------------------------------------------------------------
def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _fmt_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _created(info: Any) -> str:
    return info.created_at.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    return "\n".join(lines)


def record(info: Any) -> dict[str, Any]:
    """The JSON form of a version for ``--json`` (the manifest record plus its URL)."""
    rec = info.to_record()
    rec["url"] = info.url
    return rec


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


# ----- shared options -----------------------------------------------------------------------------------
class Opts:
    """What every command was told: how to reach storage and how to talk."""

    def __init__(self, storage_option: tuple[str, ...] = (), json_out: bool = False, quiet: bool = False) -> None:
        self.storage_options = _usage(parse_storage_options, storage_option)
        self.json = json_out
        self.quiet = quiet

    def say(self, message: str = "") -> None:
        """Human output: silent with ``--json`` or ``--quiet``."""
        if not (self.json or self.quiet):
            click.echo(message)


def _usage(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a parser; its ``ValueError`` is a usage error (exit 2)."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def common(fn: F) -> F:
    """Adds ``--storage-option``, ``--json`` and ``--quiet``; passes them as ``opts``."""

    @click.option(
        "--storage-option", "-o", "storage_option", multiple=True, metavar="KEY=VALUE",
        help="fsspec option, repeatable; dotted keys nest (client_kwargs.endpoint_url=URL), values parse as JSON.",
    )
    @click.option("--json", "json_out", is_flag=True, help="Print one JSON document for machines.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or chatter; errors still go to stderr.")
    @functools.wraps(fn)
    def wrapper(*args: Any, storage_option: tuple[str, ...], json_out: bool, quiet: bool, **kwargs: Any) -> Any:
        return fn(*args, opts=Opts(storage_option, json_out, quiet), **kwargs)

    return wrapper  # type: ignore[return-value]


def best_options(fn: F) -> F:
    fn = click.option("--mode", type=click.Choice(["min", "max"]), default="min", show_default=True,
                      help="Whether a lower or higher --metric is better.")(fn)
    return click.option("--metric", metavar="NAME", help="Metric that defines 'best'.")(fn)  # type: ignore[return-value]


def open_manager(root: str, opts: Opts, *, write: bool = False, create: bool = False) -> Any:
    """A manager on ROOT; never creates a missing root unless ``create`` (a typo must not make folders)."""
    from .manager import CheckpointManager

    mgr = CheckpointManager(root, storage_options=opts.storage_options or None, read_only=not create)
    mgr.read_only = not (write or create)  # checked the root without creating it; now allow writes
    return mgr


def resolve(mgr: Any, text: str, metric: str | None = None, mode: str = "min") -> Any:
    """A VERSION argument -> ``CheckpointInfo``; ``best`` needs ``--metric``."""
    if text == "best":
        if not metric:
            raise click.UsageError("VERSION 'best' needs --metric NAME (and --mode min|max)")
        found = mgr.best(metric, mode)
        if found is None:
            raise CheckpointNotFoundError(f"no version under {mgr.root_url} has the metric {metric!r}")
        return found
    return mgr.info(parse_selector(text))


# ----- the group ----------------------------------------------------------------------------------------
class _Main(click.Group):
    """Turns every expected error into one line on stderr and the contract's exit code."""

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        try:
            rv = super().main(args, prog_name or "torchckpt", complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else EXIT_OK
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `torchckpt`: show the help
            click.echo(exc.format_message(), err=True)
            code = EXIT_USAGE
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            code = _fail(f"{exc.format_message()}{hint}", EXIT_USAGE)
        except click.ClickException as exc:
            code = _fail(exc.format_message(), exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            code = _fail("interrupted", 130)
        except BrokenPipeError:
            sys.stdout = open(os.devnull, "w")  # the reader went away (| head): not an error to report
            code = EXIT_OK
        except (CheckpointError, OSError, ValueError) as exc:
            code = _fail(str(exc) or type(exc).__name__, EXIT_FAILED)
        except Exception as exc:  # a bug: still one line unless asked for the traceback
            if os.environ.get("TORCHCKPT_DEBUG"):
                raise
            code = _fail(f"internal error: {type(exc).__name__}: {exc} (set TORCHCKPT_DEBUG=1 for the traceback)",
                         EXIT_FAILED)
        sys.exit(code)


def _fail(message: str, code: int) -> int:
    first = " ".join(message.split())  # one line, whatever the library put in the message
    click.echo(f"torchckpt: error: {first}", err=True)
    return code


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="torchckpt", prog_name="torchckpt")
@click.option("--verbose", "-v", count=True, help="Log what the library does (-vv for debug).")
def cli(verbose: int) -> None:
    """Manage PyTorch training checkpoints on a local folder or any fsspec URL.

    ROOT is a path or URL (s3://bucket/prefix, gs://..., memory://...). S3
    endpoints also come from AWS_ENDPOINT_URL. Exit codes: 0 ok, 1 a check or
    operation failed, 2 usage error.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="torchckpt: %(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("torchckpt").setLevel(level)


# ----- list / show --------------------------------------------------------------------------------------
@cli.command("list")
@click.argument("root")
@best_options
@common
def list_cmd(root: str, metric: str | None, mode: str, opts: Opts) -> None:
    """Table of versions, oldest first; marks the latest and (with --metric) the best."""
    mgr = open_manager(root, opts)
    versions = mgr.list()
    latest = versions[-1].version if versions else None
    best = mgr._best(versions, metric, mode) if metric else None  # ranks the listing already read
    best_id = best.version if best else None
    if opts.json:
        _emit_json({
            "root": mgr.root_url, "latest": latest, "best": best_id, "metric": metric, "mode": mode,
            "versions": [{**record(v), "latest": v.version == latest, "best": v.version == best_id} for v in versions],
        })
        return
    if opts.quiet:
        for v in versions:
            click.echo(v.version)
        return
    if not versions:
        click.echo(f"no versions in {mgr.root_url}")
        return
    rows = []
    for v in versions:
        marks = [m for m, on in (("latest", v.version == latest), ("best", v.version == best_id)) if on]
        rows.append([
            v.version, str(v.step), "" if v.epoch is None else str(v.epoch), _created(v), human_size(v.size_bytes),
            " ".join(f"{k}={_fmt_metric(x)}" for k, x in v.metrics.items()), ",".join(v.tags),
            "yes" if v.pinned else "", ",".join(v.exports), ", ".join(marks),
        ])
    headers = ["ID", "STEP", "EPOCH", "CREATED", "SIZE", "METRICS", "TAGS", "PINNED", "EXPORTS", ""]
    click.echo(table(headers, rows))
    total = sum(v.size_bytes for v in versions)
    click.echo(f"{len(versions)} version(s), {human_size(total)} in {mgr.root_url}")


@cli.command()
@click.argument("root")
@click.argument("version", default="latest")
@click.option("--tensors/--no-tensors", default=True, help="Load the data to summarise its tensors (default on).")
@best_options
@common
def show(root: str, version: str, tensors: bool, metric: str | None, mode: str, opts: Opts) -> None:
    """One version's record plus a summary of its stored tensors.

    VERSION is an id, a step number, 'latest' (default) or 'best' (with --metric).
    """
    from .summary import tensor_summary

    mgr = open_manager(root, opts)
    info = resolve(mgr, version, metric, mode)
    summary = tensor_summary(mgr, info) if tensors else []
    if opts.json:
        exports = {n: mgr.storage.url(f"exports/{info.version}/{n}") for n in info.exports}
        _emit_json({"version": record(info), "export_urls": exports, "tensors": [
            {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "numel": t.numel} for t in summary]})
        return
    fields = [
        ("id", info.version), ("url", info.url), ("step", info.step), ("epoch", info.epoch),
        ("created", _created(info)), ("format", info.format), ("size", f"{human_size(info.size_bytes)} ({info.size_bytes} bytes)"),
        ("metrics", " ".join(f"{k}={_fmt_metric(x)}" for k, x in info.metrics.items()) or "-"),
        ("tags", ", ".join(info.tags) or "-"), ("pinned", "yes" if info.pinned else "no"),
        ("objects", ", ".join(info.objects) or "-"), ("torch", info.torch_version or "-"),
    ]
    click.echo("\n".join(f"{k + ':':9} {v}" for k, v in fields))
    click.echo("files:")
    for name, rec in info.files.items():
        click.echo(f"  {name}  {human_size(int(rec.get('size', 0)))}  {rec.get('checksum', '')}")
    if info.exports:
        click.echo("exports:")
        for name, rec in info.exports.items():
            rec = rec if isinstance(rec, dict) else {}
            url = mgr.storage.url(f"exports/{info.version}/{name}")
            click.echo(f"  {name}  {rec.get('kind', '')}  {human_size(int(rec.get('size', 0)))}  {url}")
    if tensors:
        total = sum(t.numel for t in summary)
        click.echo(f"tensors: {len(summary)} ({total:,} elements)")
        if summary:
            click.echo(table(["  NAME", "SHAPE", "DTYPE"],
                             [[f"  {t.name}", "x".join(map(str, t.shape)) or "scalar", t.dtype] for t in summary]))


# ----- prune / delete / pin / unpin ---------------------------------------------------------------------
@cli.command()
@click.argument("root")
@click.option("--keep-last", type=int, metavar="N", help="Keep the N most recent versions.")
@click.option("--keep-every-n-steps", type=int, metavar="K", help="Keep versions whose step is a multiple of K.")
@click.option("--keep-interval", type=DURATION, help="Keep the first version of each interval (90s, 30m, 6h, 7d).")
@click.option("--keep-best", type=int, metavar="N", help="Keep the N best by --metric.")
@best_options
@click.option("--dry-run", "-n", is_flag=True, help="Print what would be removed; remove nothing.")
@common
def prune(root: str, keep_last: int | None, keep_every_n_steps: int | None, keep_interval: timedelta | None,
          keep_best: int | None, metric: str | None, mode: str, dry_run: bool, opts: Opts) -> None:
    """Remove versions no rule keeps (a version is kept when ANY rule keeps it).

    The newest version and pinned versions are always kept.
    """
    from .retention import RetentionPolicy

    if all(x is None for x in (keep_last, keep_every_n_steps, keep_interval, keep_best)):
        raise click.UsageError("give at least one rule: --keep-last, --keep-every-n-steps, --keep-interval or --keep-best")
    policy = _usage(lambda: RetentionPolicy(keep_last=keep_last, keep_every_n_steps=keep_every_n_steps,
                                            keep_interval=keep_interval, keep_best=keep_best, metric=metric, mode=mode))
    mgr = open_manager(root, opts, write=not dry_run)
    removed = mgr.prune(policy, dry_run=dry_run)
    kept = [v for v in mgr.list() if v.version not in {r.version for r in removed}] if dry_run else mgr.list()
    if opts.json:
        _emit_json({"dry_run": dry_run, "removed": [record(v) for v in removed], "kept": [v.version for v in kept]})
        return
    verb = "would remove" if dry_run else "removed"
    for v in removed:
        opts.say(f"{verb} {v.version} (step {v.step}, {human_size(v.size_bytes)})")
    freed = human_size(sum(v.size_bytes for v in removed))
    opts.say(f"{verb} {len(removed)} version(s) ({freed}); {len(kept)} kept")


@cli.command()
@click.argument("root")
@click.argument("versions", nargs=-1, required=True, metavar="VERSION...")
@best_options
@common
def delete(root: str, versions: tuple[str, ...], metric: str | None, mode: str, opts: Opts) -> None:
    """Remove versions (refused while pinned). The newest one too, if you name it."""
    mgr = open_manager(root, opts, write=True)
    infos = list({i.version: i for i in (resolve(mgr, v, metric, mode) for v in versions)}.values())
    for info in infos:
        if info.pinned:
            raise CheckpointError(f"version {info.version} is pinned; run `torchckpt unpin` first")
    done = [mgr.delete(info) for info in infos]
    if opts.json:
        _emit_json({"deleted": [record(v) for v in done]})
    for v in done:
        opts.say(f"deleted {v.version} (step {v.step})")


def _set_pins(root: str, versions: tuple[str, ...], metric: str | None, mode: str, opts: Opts, pinned: bool) -> None:
    mgr = open_manager(root, opts, write=True)
    infos = [resolve(mgr, v, metric, mode) for v in versions]
    done = [mgr.pin(i) if pinned else mgr.unpin(i) for i in infos]
    word = "pinned" if pinned else "unpinned"
    if opts.json:
        _emit_json({word: [v.version for v in done]})
    for v in done:
        opts.say(f"{word} {v.version} (step {v.step})")


@cli.command()
@click.argument("root")
@click.argument("versions", nargs=-1, required=True, metavar="VERSION...")
@best_options
@common
def pin(root: str, versions: tuple[str, ...], metric: str | None, mode: str, opts: Opts) -> None:
    """Protect versions from every prune."""
    _set_pins(root, versions, metric, mode, opts, True)


@cli.command()
@click.argument("root")
@click.argument("versions", nargs=-1, required=True, metavar="VERSION...")
@best_options
@common
def unpin(root: str, versions: tuple[str, ...], metric: str | None, mode: str, opts: Opts) -> None:
    """Let prune consider these versions again."""
    _set_pins(root, versions, metric, mode, opts, False)


# ----- verify / gc / repair -----------------------------------------------------------------------------
@cli.command()
@click.argument("root")
@click.argument("version", required=False)
@best_options
@common
def verify(root: str, version: str | None, metric: str | None, mode: str, opts: Opts) -> None:
    """Check sizes and checksums of one version or of all; exit 1 on any mismatch."""
    mgr = open_manager(root, opts)
    target = None if version is None else resolve(mgr, version, metric, mode)
    report = mgr.verify(target)
    bad = {v for v, _ in report.problems}
    if opts.json:
        _emit_json({"ok": report.ok, "checked": report.checked,
                    "problems": [{"version": v, "problem": p} for v, p in report.problems]})
    else:
        for vid in report.checked:
            if vid not in bad:
                opts.say(f"ok      {vid}")
        for vid, problem in report.problems:
            click.echo(f"FAILED  {vid}: {problem}")
        opts.say(f"{len(report.checked) - len(bad)} ok, {len(bad)} failed")
    if not report.ok:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@click.argument("root")
@click.option("--older-than", type=DURATION, default="1h", show_default=True,
              help="Grace period: leftovers younger than this may be another writer's save in progress.")
@common
def gc(root: str, older_than: timedelta, opts: Opts) -> None:
    """Remove uncommitted leftovers (interrupted saves, orphaned exports)."""
    mgr = open_manager(root, opts, write=True)
    removed = mgr.gc(older_than=older_than)
    if opts.json:
        _emit_json({"removed": [mgr.storage.url(r) for r in removed]})
    for rel in removed:
        opts.say(f"removed {mgr.storage.url(rel)}")
    opts.say(f"removed {len(removed)} leftover(s)")


@cli.command()
@click.argument("root")
@common
def repair(root: str, opts: Opts) -> None:
    """Rebuild the manifest from the versions' meta.json files (keeps known pins and exports)."""
    mgr = open_manager(root, opts, write=True)
    before = {v.version for v in _safe_list(mgr)}
    versions = mgr.repair()
    after = {v.version for v in versions}
    if opts.json:
        _emit_json({"versions": [v.version for v in versions], "added": sorted(after - before),
                    "dropped": sorted(before - after)})
        return
    for vid in sorted(after - before):
        opts.say(f"listed again {vid}")
    for vid in sorted(before - after):
        opts.say(f"dropped {vid} (no meta.json)")
    opts.say(f"manifest rebuilt: {len(versions)} version(s)")


def _safe_list(mgr: Any) -> list[Any]:
    try:
        return mgr.list()
    except CheckpointError:  # the manifest is what repair is here to fix
        return []


# ----- copy ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("src")
@click.argument("dst")
@click.argument("versions", nargs=-1, metavar="[VERSION...]")
@click.option("--src-storage-option", multiple=True, metavar="KEY=VALUE", help="Like --storage-option, for SRC only.")
@click.option("--dst-storage-option", multiple=True, metavar="KEY=VALUE", help="Like --storage-option, for DST only.")
@best_options
@common
def copy(src: str, dst: str, versions: tuple[str, ...], src_storage_option: tuple[str, ...],
         dst_storage_option: tuple[str, ...], metric: str | None, mode: str, opts: Opts) -> None:
    """Copy versions (default: all) from SRC to DST, verifying checksums.

    Each version is committed at DST with the normal protocol; versions already
    there are skipped, so an interrupted copy can be rerun. Pins stay per root.
    """
    from .transfer import copy_size, copy_versions, plan_copy

    src_opts = Opts(opts_pairs(opts, src_storage_option), opts.json, opts.quiet)
    dst_opts = Opts(opts_pairs(opts, dst_storage_option), opts.json, opts.quiet)
    src_mgr = open_manager(src, src_opts)
    dst_mgr = open_manager(dst, dst_opts, create=True)
    chosen = [resolve(src_mgr, v, metric, mode) for v in versions] if versions else None
    todo, skipped = plan_copy(src_mgr, dst_mgr, chosen)
    copied: list[Any] = []
    try:
        with _progress(sum(copy_size(v) for v in todo), opts) as bar:
            for info in todo:  # one at a time, so a failure can still report what was committed
                copied += copy_versions(src_mgr, dst_mgr, [info], progress=bar)
    except BaseException:
        for v in copied:
            opts.say(f"copied  {v.version} (step {v.step}, {human_size(v.size_bytes)})")
        raise
    if opts.json:
        _emit_json({"src": src_mgr.root_url, "dst": dst_mgr.root_url, "copied": [record(v) for v in copied],
                    "skipped": [v.version for v in skipped]})
        return
    for v in skipped:
        opts.say(f"skipped {v.version} (already at destination)")
    for v in copied:
        opts.say(f"copied  {v.version} (step {v.step}, {human_size(v.size_bytes)})")
    opts.say(f"copied {len(copied)} version(s), skipped {len(skipped)}: {src_mgr.root_url} -> {dst_mgr.root_url}")


def opts_pairs(opts: Opts, specific: tuple[str, ...]) -> tuple[str, ...]:
    """Shared options re-expressed as pairs, then the root-specific ones (which win)."""
    return tuple(f"{k}={json.dumps(v)}" for k, v in _flatten(opts.storage_options)) + specific


def _flatten(options: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in options.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class _progress:
    """A tqdm byte bar on stderr, only on a terminal and without ``--quiet``/``--json``."""

    def __init__(self, total: int, opts: Opts) -> None:
        self.bar: Any = None
        if total and not (opts.quiet or opts.json) and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="copying", file=sys.stderr)

    def __enter__(self) -> Callable[[int], Any] | None:
        return self.bar.update if self.bar is not None else None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


# ----- demo ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("root", default="checkpoints")
@click.option("--epochs", type=click.IntRange(2, 100), default=6, show_default=True, help="Epochs in all.")
@common
def demo(root: str, epochs: int, opts: Opts) -> None:
    """Train a small model with checkpoints, interrupt it, resume it, export the best version.

    ROOT defaults to ./checkpoints; running the demo again on it continues there.
    """
    from .demo import run_demo

    result = run_demo(root, epochs=epochs, storage_options=opts.storage_options or None, report=opts.say)
    if opts.json:
        _emit_json(result.to_json())


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``torchckpt``, ``python -m torchckpt``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="torchckpt")


if __name__ == "__main__":  # pragma: no cover
    main()
