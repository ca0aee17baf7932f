"""The ``bandistill`` command group: turns user errors into one line and exit code 2."""

from __future__ import annotations

import sys

import click

from bandistill import __version__
from bandistill.distributed import error_line, is_main, stop
from bandistill.errors import UserError, VerificationError, is_disk_full


def _usage_error(exc: click.UsageError) -> None:
    """A malformed command line (bad option value, unknown option or command): one line, exit 2."""
    where = exc.ctx.command_path if exc.ctx is not None else "bandistill"
    message = " ".join(exc.format_message().split()).rstrip(".")
    click.echo(f"error: {message}; see '{where} --help'", err=True)
    sys.exit(2)


class BandistillGroup(click.Group):
    """A click group whose commands report :class:`UserError` as one line, exit 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["bandistill.argv"] = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.exceptions.NoArgsIsHelpError:
            raise  # plain 'bandistill': click prints the help
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            _usage_error(exc)
        except UserError as exc:
            line = error_line(exc)  # under torchrun: rank 0, or the rank that found it, prints
            if line is not None:
                click.echo(f"error: {line}", err=True)
            sys.exit(2)
        except VerificationError as exc:
            click.echo(f"failed: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            # A path the user gave cannot be read or written (missing folder, a file where a
            # folder should be, no permission, disk full): their environment, not our bug.
            where = f": {exc.filename}" if exc.filename else ""
            if is_disk_full(exc):
                click.echo(f"error: {exc.strerror or exc}{where}; free space and run the same command again",
                           err=True)
            else:
                click.echo(f"error: {exc.strerror or exc}{where}; check the path and its permissions", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            if not is_main():  # under torchrun every rank gets the signal; rank 0 says it once
                sys.exit(130)
            if ctx.invoked_subcommand == "train" and "--resume" not in ctx.meta.get("bandistill.argv", []):
                # a second plain 'train' refuses the half-written --out folder; it needs --resume
                click.echo("interrupted; run the same command again with --resume to continue", err=True)
            else:
                click.echo("interrupted; run the same command again to resume", err=True)
            sys.exit(130)


@click.group(cls=BandistillGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bandistill")
def cli() -> None:
    """Born-Again Neural Networks, offline: train, cache soft targets, distil, export, ensemble."""


def _register() -> None:
    from bandistill.cli import models, train

    for module in (models, train):
        cli.add_command(module.command)
    for optional in ("import_teacher", "dump", "verify", "export", "ensemble", "ban", "report"):
        try:
            module = __import__(f"bandistill.cli.{optional}", fromlist=["command"])
        except ModuleNotFoundError as exc:
            if exc.name != f"bandistill.cli.{optional}":
                raise
            continue
        cli.add_command(module.command)


_register()


def main() -> None:
    try:
        cli(prog_name="bandistill")
    finally:
        stop()  # leave torchrun's process group, if a distributed command joined one


if __name__ == "__main__":
    main()
