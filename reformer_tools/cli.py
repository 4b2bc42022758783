"""The ``reformer-tools`` command group: registration and error -> exit code translation."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from typing import Any, NoReturn

import click

from reformer_tools import __version__
from reformer_tools.commands._common import EXIT_CODES_HELP, debug_option
from reformer_tools.commands.convert import convert
from reformer_tools.commands.inspect import inspect
from reformer_tools.commands.verify import verify
from reformer_tools.errors import ExitCode, ReformerToolsError


class _Group(click.Group):
    """Turns domain errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()  # a reader that went away shows here, not at exit
            return result
        except ReformerToolsError as failure:
            _fail(ctx, str(failure), failure.exit_code, failure)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted; nothing was written", ExitCode.INTERRUPTED, None)
        except BrokenPipeError:
            # The reader went away (| head): stop quietly, as command-line tools do, and keep Python's
            # own flush at exit from failing again on the closed pipe.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(int(ExitCode.STDOUT_CLOSED))
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except MemoryError as failure:
            # The checkpoint asks for more than this machine has (the loader names the file when it is there).
            _fail(ctx, "out of memory: the checkpoint needs more than this machine has", ExitCode.UNREADABLE, failure)
        except Exception as failure:  # a bug: still one line, traceback with --debug
            message = f"internal error: {type(failure).__name__}: {failure} (please report it with --debug output)"
            _fail(ctx, message, ExitCode.INTERNAL, failure)


def _fail(ctx: click.Context, message: str, code: int, failure: BaseException | None) -> NoReturn:
    from reformer_tools._console import error

    if failure is not None and ctx.find_root().meta.get("debug"):
        traceback.print_exception(failure, file=sys.stderr)
    error(message)
    ctx.exit(int(code))


@click.group(cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="reformer-tools")
@debug_option
def cli() -> None:
    """Inspect, convert and verify Google Trax Reformer checkpoints for Hugging Face.

    Every Trax checkpoint format is read with numpy alone, through an allow-list
    unpickler that never runs code from the file. No Trax, jax or TensorFlow needed.
    """


for _command in (inspect, convert, verify):
    cli.add_command(_command)


def _terminate(signum: int, _frame: Any) -> NoReturn:
    # SIGTERM unwinds like Ctrl-C, so pending output is discarded in `finally` blocks.
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="reformer-tools")
