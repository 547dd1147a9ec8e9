"""The ``torchckpt`` group: shared options, opening roots, and the exit-code contract.

Exit codes are part of the contract (0 ok, 1 a check or an operation failed,
2 usage error) and every expected error is one line on stderr, so cron jobs and
CI can rely on them. ``--json`` prints one JSON document on stdout for machines.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from ..errors import CheckpointError, CheckpointNotFoundError
from ..manager import CheckpointManager
from ..records import CheckpointInfo
from .parsing import parse_selector, parse_storage_options

F = TypeVar("F", bound=Callable[..., Any])
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Opts:
    """What every command was told: how to reach storage and how to talk."""

    def __init__(self, storage_option: tuple[str, ...] = (), json_out: bool = False, quiet: bool = False) -> None:
        self.storage_options = usage_errors(parse_storage_options, storage_option)
        self.json = json_out
        self.quiet = quiet

    def say(self, message: str = "") -> None:
        """Human output: silent with ``--json`` or ``--quiet``."""
        if not (self.json or self.quiet):
            click.echo(message)


def usage_errors(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a parser; its ``ValueError`` is a usage error (exit 2)."""
    try:
        return fn(*args)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def common(fn: F) -> F:
    """Adds ``--storage-option``, ``--json`` and ``--quiet``; passes them as ``opts``."""

    @click.option(
        "--storage-option",
        "-o",
        "storage_option",
        multiple=True,
        metavar="KEY=VALUE",
        help="fsspec option, repeatable; dotted keys nest (client_kwargs.endpoint_url=URL), values parse as JSON.",
    )
    @click.option("--json", "json_out", is_flag=True, help="Print one JSON document for machines.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars or chatter; errors still go to stderr.")
    @functools.wraps(fn)
    def wrapper(*args: Any, storage_option: tuple[str, ...], json_out: bool, quiet: bool, **kwargs: Any) -> Any:
        return fn(*args, opts=Opts(storage_option, json_out, quiet), **kwargs)

    return wrapper  # type: ignore[return-value]


def best_options(fn: F) -> F:
    fn = click.option(
        "--mode",
        type=click.Choice(["min", "max"]),
        default="min",
        show_default=True,
        help="Whether a lower or higher --metric is better.",
    )(fn)
    return click.option("--metric", metavar="NAME", help="Metric that defines 'best'.")(fn)


def open_manager(
    root: str, opts: Opts, *, write: bool = False, create: bool = False, cache: str | None = None
) -> CheckpointManager:
    """A manager on ROOT (with ``cache``: both tiers, no uploads); never creates a missing root unless ``create``."""
    mgr = CheckpointManager(root, storage_options=opts.storage_options or None, read_only=not create, cache=cache)
    mgr.read_only = not (write or create)  # checked the root without creating it; now allow writes
    return mgr


def resolve(mgr: CheckpointManager, text: str, metric: str | None = None, mode: str = "min") -> CheckpointInfo:
    """A VERSION argument -> ``CheckpointInfo``; ``best`` needs ``--metric``."""
    if text == "best":
        if not metric:
            raise click.UsageError("VERSION 'best' needs --metric NAME (and --mode min|max)")
        found = mgr.best(metric, mode)
        if found is None:
            raise CheckpointNotFoundError(f"no version under {mgr.root_url} has the metric {metric!r}")
        return found
    return mgr.info(parse_selector(text))


class _Main(click.Group):
    """Turns every expected error into one line on stderr and the contract's exit code."""

    def main(
        self,
        args: Any = None,
        prog_name: Any = None,
        complete_var: Any = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
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
            sys.stdout = open(os.devnull, "w")  # the reader went away (| head): not an error to report  # noqa: SIM115
            code = EXIT_OK
        except (CheckpointError, OSError, ValueError) as exc:
            code = _fail(str(exc) or type(exc).__name__, EXIT_FAILED)
        except Exception as exc:  # a bug: still one line unless asked for the traceback
            if os.environ.get("TORCHCKPT_DEBUG"):
                raise
            code = _fail(
                f"internal error: {type(exc).__name__}: {exc} (set TORCHCKPT_DEBUG=1 for the traceback)", EXIT_FAILED
            )
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


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point (``torchckpt``, ``python -m torchckpt``)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="torchckpt")
