"""The commands that inspect and manage one root: list, show, prune, delete, pin, unpin, verify, gc, repair."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from ..errors import CheckpointError
from ..layout import export_path
from ..selectors import best as best_of
from .app import EXIT_FAILED, Opts, best_options, cli, common, open_manager, resolve, usage_errors
from .output import created, emit_json, fmt_metric, human_size, record, table
from .parsing import DURATION

CACHE_OPTION = click.option("--cache", metavar="DIR", help="The local cache tier in front of ROOT (see docs/tiers.md).")


# ----- list / show --------------------------------------------------------------------------------------
@cli.command("list")
@click.argument("root")
@CACHE_OPTION
@best_options
@common
def list_cmd(root: str, cache: str | None, metric: str | None, mode: str, opts: Opts) -> None:
    """Table of versions, oldest first; marks the latest and (with --metric) the best.

    With --cache: also versions committed in the cache but not uploaded yet, and where each version is.
    """
    mgr = open_manager(root, opts, cache=cache)
    versions = mgr.list()
    latest = versions[-1].version if versions else None
    best = best_of(versions, metric, mode) if metric else None  # ranks the listing already read
    best_id = best.version if best else None
    if opts.json:
        emit_json(
            {
                "root": mgr.root_url,
                "latest": latest,
                "best": best_id,
                "metric": metric,
                "mode": mode,
                "versions": [
                    {**record(v), "latest": v.version == latest, "best": v.version == best_id} for v in versions
                ],
            }
        )
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
        rows.append(
            [
                v.version if v.name is None else f"{v.version} ({v.name})",
                str(v.step),
                "" if v.epoch is None else str(v.epoch),
                created(v),
                human_size(v.size_bytes),
                " ".join(f"{k}={fmt_metric(x)}" for k, x in v.metrics.items()),
                ",".join(v.tags),
                "yes" if v.pinned else "",
                ",".join(v.exports),
                *([",".join(v.tiers)] if cache else []),
                ", ".join(marks),
            ]
        )
    headers = [
        "ID",
        "STEP",
        "EPOCH",
        "CREATED",
        "SIZE",
        "METRICS",
        "TAGS",
        "PINNED",
        "EXPORTS",
        *(["TIERS"] if cache else []),
        "",
    ]
    click.echo(table(headers, rows))
    total = sum(v.size_bytes for v in versions)
    pending = sum("root" not in v.tiers for v in versions)
    click.echo(
        f"{len(versions)} version(s), {human_size(total)} in {mgr.root_url}"
        + (f"; {pending} not uploaded yet from {cache}" if cache else "")
    )


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
    from ..summary import tensor_summary

    mgr = open_manager(root, opts)
    info = resolve(mgr, version, metric, mode)
    summary = tensor_summary(mgr, info) if tensors else []
    if opts.json:
        exports = {n: mgr.storage.url(export_path(info.version, n)) for n in info.exports}
        emit_json(
            {
                "version": record(info),
                "export_urls": exports,
                "tensors": [
                    {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "numel": t.numel} for t in summary
                ],
            }
        )
        return
    fields = [
        ("id", info.version),
        *([("name", info.name)] if info.name else []),
        ("url", info.url),
        ("step", info.step),
        ("epoch", info.epoch),
        ("created", created(info)),
        ("format", info.format),
        ("size", f"{human_size(info.size_bytes)} ({info.size_bytes} bytes)"),
        ("metrics", " ".join(f"{k}={fmt_metric(x)}" for k, x in info.metrics.items()) or "-"),
        ("tags", ", ".join(info.tags) or "-"),
        ("pinned", "yes" if info.pinned else "no"),
        ("objects", ", ".join(info.objects) or "-"),
        ("torch", info.torch_version or "-"),
    ]
    click.echo("\n".join(f"{k + ':':9} {v}" for k, v in fields))
    click.echo("files:")
    for name, rec in info.files.items():
        click.echo(f"  {name}  {human_size(int(rec.get('size', 0)))}  {rec.get('checksum', '')}")
    if info.exports:
        click.echo("exports:")
        for name, rec in info.exports.items():
            rec = rec if isinstance(rec, dict) else {}
            url = mgr.storage.url(export_path(info.version, name))
            click.echo(f"  {name}  {rec.get('kind', '')}  {human_size(int(rec.get('size', 0)))}  {url}")
    if tensors:
        total = sum(t.numel for t in summary)
        click.echo(f"tensors: {len(summary)} ({total:,} elements)")
        if summary:
            click.echo(
                table(
                    ["  NAME", "SHAPE", "DTYPE"],
                    [[f"  {t.name}", "x".join(map(str, t.shape)) or "scalar", t.dtype] for t in summary],
                )
            )


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
def prune(
    root: str,
    keep_last: int | None,
    keep_every_n_steps: int | None,
    keep_interval: timedelta | None,
    keep_best: int | None,
    metric: str | None,
    mode: str,
    dry_run: bool,
    opts: Opts,
) -> None:
    """Remove versions no rule keeps (a version is kept when ANY rule keeps it).

    The newest version and pinned versions are always kept.
    """
    from ..retention import RetentionPolicy

    if all(x is None for x in (keep_last, keep_every_n_steps, keep_interval, keep_best)):
        raise click.UsageError(
            "give at least one rule: --keep-last, --keep-every-n-steps, --keep-interval or --keep-best"
        )
    policy = usage_errors(
        lambda: RetentionPolicy(
            keep_last=keep_last,
            keep_every_n_steps=keep_every_n_steps,
            keep_interval=keep_interval,
            keep_best=keep_best,
            metric=metric,
            mode=mode,
        )
    )
    mgr = open_manager(root, opts, write=not dry_run)
    removed = mgr.prune(policy, dry_run=dry_run)
    kept = [v for v in mgr.list() if v.version not in {r.version for r in removed}] if dry_run else mgr.list()
    if opts.json:
        emit_json({"dry_run": dry_run, "removed": [record(v) for v in removed], "kept": [v.version for v in kept]})
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
        emit_json({"deleted": [record(v) for v in done]})
    for v in done:
        opts.say(f"deleted {v.version} (step {v.step})")


def _set_pins(root: str, versions: tuple[str, ...], metric: str | None, mode: str, opts: Opts, pinned: bool) -> None:
    mgr = open_manager(root, opts, write=True)
    infos = [resolve(mgr, v, metric, mode) for v in versions]
    done = [mgr.pin(i) if pinned else mgr.unpin(i) for i in infos]
    word = "pinned" if pinned else "unpinned"
    if opts.json:
        emit_json({word: [v.version for v in done]})
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
        emit_json(
            {
                "ok": report.ok,
                "checked": report.checked,
                "problems": [{"version": v, "problem": p} for v, p in report.problems],
            }
        )
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
@click.option(
    "--older-than",
    type=DURATION,
    default="1h",
    show_default=True,
    help="Grace period: leftovers younger than this may be another writer's save in progress.",
)
@common
def gc(root: str, older_than: timedelta, opts: Opts) -> None:
    """Remove uncommitted leftovers (interrupted saves, orphaned exports)."""
    mgr = open_manager(root, opts, write=True)
    removed = mgr.gc(older_than=older_than)
    if opts.json:
        emit_json({"removed": [mgr.storage.url(r) for r in removed]})
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
        emit_json(
            {
                "versions": [v.version for v in versions],
                "added": sorted(after - before),
                "dropped": sorted(before - after),
            }
        )
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
