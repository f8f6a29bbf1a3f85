"""The `fer` command: the Typer app, its commands registered (one module each), errors turned into one line and an
exit code, --version, and the signals that stop a run.

    fer predict photos/                       # a file, a folder (recursive), a glob, or '-' for paths on stdin
    fer predict face.png --format json        # table (default on a terminal) | json | jsonl | csv
    fer predict photos/ --annotate out/       # every face found, boxes drawn on copies in out/
    fer ensemble --weighted labelled_dir/     # every shipped model scored, and their votes
    fer train DATA --val VAL --arch vgg --epochs 30 --out weights/vgg.pt
    fer models                                # architectures and available weights
    fer serve                                 # the same predictions over HTTP, and a page

Exit codes: 0 success; 1 the run finished but some inputs could not be read; 2 a usage error
(bad option, missing model, unusable dataset...). Results go to stdout, everything else to stderr.

Help is Click's plain layout (``rich_markup_mode=None``): Typer's rich panels print a type such as
``<bool>`` beside every flag, its own --help included, and read square brackets as markup.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from typing import Annotated

import typer
from typer.core import TyperCommand

from .. import __version__
from ..errors import FerError, Interrupted
from ..outputs.terminal import markup_safe
from .calibrate import calibrate
from .console import USAGE_ERROR, err_console
from .ensemble import ensemble
from .export import export
from .models import models
from .predict import predict
from .serve import serve
from .train import train

EXAMPLES = """Examples:

\b
  fer predict photos/                  # every face in a folder: a table
  fer predict face.png -f json         # table | json | jsonl | csv
  fer predict photos/ --annotate out/  # copies with boxes and labels drawn
  fer ensemble --weighted val/         # score the models and their votes
  fer train data/ --epochs 30          # train (data/train, data/val)
  fer models                           # models, their classes, accuracy
  fer serve                            # over HTTP, a page to drop photos on

Results go to stdout, messages to stderr. Exit codes: 0 done; 1 done, but some inputs could not
be read; 2 usage error (a bad option, a missing model, an unusable data set)."""


class _Command(TyperCommand):
    """Usage lines in the usual notation (``SOURCE...``, ``[OUT]``) instead of Typer's ``{source}...``."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = (param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else "")
            pieces.append(name if param.required else f"[{name}]")
        return pieces

    def format_options(self, ctx, formatter) -> None:
        """Typer's sections, each argument named by its metavar alone: Typer adds its Python type (``SOURCE
        <list[str]>``, ``DATA <str>``), which says nothing to a user. Options keep their choices (``<auto|detect>``)."""
        arguments, options = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                arguments.append(
                    ((param.metavar or param.name.upper()) + ("..." if param.nargs != 1 else ""), record[1])
                )
            else:
                options.append(record)
        for title, records in (("Arguments", arguments), ("Options", options)):
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


app = typer.Typer(
    help="Facial-expression recognition for image files and folders.",
    epilog=EXAMPLES,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,  # plain help: no <bool> beside flags, brackets shown as typed (see above)
    pretty_exceptions_enable=False,
)


def handles_user_errors(command):
    """Turn the library's user-facing errors into one line on stderr and exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except FerError as error:
            err_console.print(f"[bold red]error:[/] {markup_safe(error)}", highlight=False)
            if os.environ.get("FER_DEBUG"):
                raise
            raise typer.Exit(USAGE_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except Interrupted as stop:
            err_console.print(f"stopped by signal {stop.signal_number}")
            raise typer.Exit(128 + stop.signal_number) from None
        except BrokenPipeError:
            # The reader of stdout went away (`fer predict ... | head -1`): stop quietly, as the shell's own tools
            # do, with SIGPIPE's status, not 1 ("some inputs failed"). Later writes go nowhere.
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(128 + signal.SIGPIPE) from None

    return wrapper


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        def installed(package: str) -> str:  # from the metadata: importing torch takes seconds
            try:
                return version(package)
            except PackageNotFoundError:
                return "not installed"

        typer.echo(
            f"fer {__version__} (torch {installed('torch')}, onnxruntime {installed('onnxruntime')}, "
            f"Python {sys.version.split()[0]})"
        )
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_show_version, help="Show fer's version and exit."),
    ] = False,
) -> None:
    """Facial-expression recognition for image files and folders: a label and a confidence for every face."""


# `fer --help` lists the commands in the order people use them; each turns the library's errors into exit codes.
for _command in (predict, ensemble, train, calibrate, export, models, serve):
    app.command(cls=_Command)(handles_user_errors(_command))

_MAIN_PROCESS = os.getpid()


def main() -> None:
    global _MAIN_PROCESS
    _MAIN_PROCESS = os.getpid()
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 is written with its own bytes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")
    signal.signal(signal.SIGTERM, _stop)  # unwind as for Ctrl-C: outputs finished, workers stopped
    signal.signal(signal.SIGINT, _stop)
    app(prog_name="fer")


def _stop(signal_number, frame) -> None:
    if os.getpid() != _MAIN_PROCESS:
        # A worker forked a moment ago still has the main process's handlers until it sets its own:
        # the signal that reached the whole group is the main process's to report, the worker just ends.
        os._exit(128 + signal_number)
    if signal_number == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signal_number)
