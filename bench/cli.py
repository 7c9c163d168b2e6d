"""The `bench` command line.

Subcommands live in `bench/commands/<name>.py`, each exposing a click command named `command`.
They are imported only when used, so `bench --help` stays fast and a missing heavy dependency
(torch, llama_cpp) only affects the commands that need it.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from bench import __version__
from bench.errors import BenchError

# name -> module under bench.commands; order is the order `bench --help` lists them in.
COMMANDS = {
    "models": "models",
    "fetch": "fetch",
    "hw": "hw",
    "profile": "profile",
    "score": "score",
    "report": "report",
    "compare": "compare",
    "twin": "twin",
    "calibrate": "calibrate",
    "crosscheck": "crosscheck",
    "sweep": "sweep",
    "quant-damage": "quant_damage",
    "export": "export",
    "import": "import_run",
    "publish": "publish",
    "pull": "pull",
}


@dataclass
class CliContext:
    """What every subcommand may need from the top-level options."""

    manifest_path: Path | None


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._module(name) is not None]

    def get_command(self, ctx, name):
        module = self._module(name)
        return getattr(module, "command", None) if module else None

    @staticmethod
    def _module(name):
        module_name = COMMANDS.get(name)
        if module_name is None:
            return None
        qualified = f"bench.commands.{module_name}"
        try:
            return importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            # Only a command that is not written yet is skipped; a broken import inside it is not.
            if exc.name == qualified:
                return None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bench")
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="BENCH_MANIFEST",
    default=None,
    help="Model manifest TOML (default: the shipped gguf_manifest.toml; env BENCH_MANIFEST).",
)
@click.pass_context
def cli(ctx, manifest):
    """Benchmark small GGUF language models in-process: quality, JSON reliability, speed, energy."""
    ctx.obj = CliContext(manifest_path=manifest)


def main(argv=None):
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        # Commands signal failure with ctx.exit(code) or a BenchError; in non-standalone mode
        # click hands ctx.exit's code back as the return value.
        exit_code = cli.main(args=argv, prog_name="bench", standalone_mode=False)
    except BenchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, the trace on request
        if os.environ.get("BENCH_DEBUG"):
            raise
        click.echo(
            f"internal error: {type(exc).__name__}: {exc} (set BENCH_DEBUG=1 for the traceback)",
            err=True,
        )
        sys.exit(3)
    sys.exit(exit_code if isinstance(exit_code, int) else 0)


if __name__ == "__main__":
    main()
