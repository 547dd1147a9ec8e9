"""Commands that move versions between places: copy, sync (a cache tier's uploads), and the demo."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import click

from .app import Opts, best_options, cli, common, open_manager, resolve
from .output import Progress, emit_json, human_size, record

CACHE_OPTION = click.option("--cache", metavar="DIR", help="The local cache tier in front of ROOT (see docs/tiers.md).")


# ----- copy ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("src")
@click.argument("dst")
@click.argument("versions", nargs=-1, metavar="[VERSION...]")
@click.option("--src-storage-option", multiple=True, metavar="KEY=VALUE", help="Like --storage-option, for SRC only.")
@click.option("--dst-storage-option", multiple=True, metavar="KEY=VALUE", help="Like --storage-option, for DST only.")
@best_options
@common
def copy(
    src: str,
    dst: str,
    versions: tuple[str, ...],
    src_storage_option: tuple[str, ...],
    dst_storage_option: tuple[str, ...],
    metric: str | None,
    mode: str,
    opts: Opts,
) -> None:
    """Copy versions (default: all) from SRC to DST, verifying checksums.

    Each version is committed at DST with the normal protocol; versions already
    there are skipped, so an interrupted copy can be rerun. Pins stay per root.
    """
    from ..transfer import copy_size, copy_versions, plan_copy

    src_opts = Opts(opts_pairs(opts, src_storage_option), opts.json, opts.quiet)
    dst_opts = Opts(opts_pairs(opts, dst_storage_option), opts.json, opts.quiet)
    src_mgr = open_manager(src, src_opts)
    dst_mgr = open_manager(dst, dst_opts, create=True)
    chosen = [resolve(src_mgr, v, metric, mode) for v in versions] if versions else None
    todo, skipped = plan_copy(src_mgr, dst_mgr, chosen)
    copied: list[Any] = []
    try:
        with Progress(sum(copy_size(v) for v in todo), quiet=opts.quiet or opts.json) as bar:
            for info in todo:  # one at a time, so a failure can still report what was committed
                copied += copy_versions(src_mgr, dst_mgr, [info], progress=bar)
    except BaseException:
        for v in copied:
            opts.say(f"copied  {v.version} (step {v.step}, {human_size(v.size_bytes)})")
        raise
    if opts.json:
        emit_json(
            {
                "src": src_mgr.root_url,
                "dst": dst_mgr.root_url,
                "copied": [record(v) for v in copied],
                "skipped": [v.version for v in skipped],
            }
        )
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


# ----- sync ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("root")
@click.option("--cache", metavar="DIR", required=True, help="The local cache tier whose pending versions to upload.")
@click.option(
    "--cache-keep-last",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    metavar="N",
    help="Uploaded versions the cache keeps afterwards.",
)
@common
def sync(root: str, cache: str, cache_keep_last: int, opts: Opts) -> None:
    """Upload the versions committed in the cache DIR but not yet in ROOT (what a crashed run left behind).

    The same upload pass as a manager's background uploader: each version is verified,
    committed with ROOT's protocol and listed; exit 1 if any upload failed (they stay in the cache).
    """
    from ..copying import copy_size
    from ..tiers import Tiers, failure, upload_pending

    mgr = open_manager(root, opts, create=True)
    open_manager(root, opts, cache=cache)  # a missing cache is an error, not a new empty folder
    tiers = Tiers(mgr.storage, cache, keep_last=cache_keep_last, retention=None, read_only=False, background=False)
    with Progress(sum(copy_size(v) for v in tiers.pending()), quiet=opts.quiet or opts.json) as bar:
        uploaded, failed = upload_pending(tiers.tier, None, progress=bar)
    for v in uploaded:
        opts.say(f"uploaded {v.version} (step {v.step}, {human_size(v.size_bytes)})")
    if failed:
        raise failure(tiers.tier, failed)
    if opts.json:
        emit_json({"root": mgr.root_url, "cache": tiers.cache_url, "uploaded": [record(v) for v in uploaded]})
        return
    opts.say(f"uploaded {len(uploaded)} version(s) from {tiers.cache_url} to {mgr.root_url}")


# ----- demo ---------------------------------------------------------------------------------------------
@cli.command()
@click.argument("root", default="checkpoints")
@click.option("--epochs", type=click.IntRange(2, 100), default=6, show_default=True, help="Epochs in all.")
@common
def demo(root: str, epochs: int, opts: Opts) -> None:
    """Train a small model with checkpoints, interrupt it, resume it, export the best version.

    ROOT defaults to ./checkpoints; running the demo again on it continues there.
    """
    from ..demo import run_demo

    result = run_demo(root, epochs=epochs, storage_options=opts.storage_options or None, report=opts.say)
    if opts.json:
        emit_json(result.to_json())
