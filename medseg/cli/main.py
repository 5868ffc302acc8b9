"""The `medseg` command: global options, subcommand registration, and error -> exit-code mapping.

Exit codes: 0 success, 2 usage error, 3 invalid input, 4 processing failure, 5 QC rejection.
Only this package prints or exits; library code raises `medseg.errors.MedsegError` subclasses.
"""

from __future__ import annotations

import sys
import traceback
from typing import NoReturn

import typer

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

from medseg import __version__
from medseg.cli import audit as audit_cmd
from medseg.cli import convert as convert_cmd
from medseg.cli import deid as deid_cmd
from medseg.cli import infer as infer_cmd
from medseg.cli import keys as keys_cmd
from medseg.cli import models as models_cmd
from medseg.cli import monitor as monitor_cmd
from medseg.cli import pacs as pacs_cmd
from medseg.cli import series as series_cmd
from medseg.cli import state
from medseg.cli import train as train_cmd
from medseg.cli import validate as validate_cmd
from medseg.cli.state import console
from medseg.errors import MedsegError
from medseg.signals import interrupt_on_sigterm

EXIT_OK, EXIT_USAGE, EXIT_INVALID_INPUT, EXIT_PROCESSING, EXIT_QC, EXIT_INTERRUPTED = 0, 2, 3, 4, 5, 130

app = typer.Typer(
    name="medseg",
    help="CT organ segmentation with traceable, checked and audited results.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.result(f"medseg {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings, errors and results."),
    log_json: bool = typer.Option(False, "--log-json", help="Log machine-readable JSON lines on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """CT organ segmentation with traceable, checked and audited results.

    Exit codes: 0 ok, 2 usage error, 3 invalid input, 4 processing failure, 5 QC rejection.
    """
    console.debug, console.quiet, console.log_json = debug, quiet, log_json


convert_cmd.register(app)
deid_cmd.register(app)
infer_cmd.register(app)
models_cmd.register(app)
audit_cmd.register(app)
keys_cmd.register(app)
series_cmd.register(app)
train_cmd.register(app)
validate_cmd.register(app)
pacs_cmd.register(app)
monitor_cmd.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and map every failure to one line on stderr plus its exit code."""
    args = sys.argv[1:] if argv is None else argv
    console.debug = "--debug" in args
    state.fast_exit.clear()
    try:
        # systemd, docker stop and schedulers send SIGTERM: the same clean stop as Ctrl-C; a process (not an in-process
        # call) then ignores both while it reports and exits, its outcome already on record
        with interrupt_on_sigterm(ignore_after=argv is None):
            code = app(args=args, prog_name="medseg", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except NoArgsIsHelpError as exc:
        console.result(exc.format_message())
        sys.exit(EXIT_USAGE)
    except UsageError as exc:
        console.error(exc.format_message().rstrip(".") + ". See `medseg --help`.")
        sys.exit(EXIT_USAGE)
    except ClickException as exc:
        console.error(exc.format_message())
        sys.exit(EXIT_USAGE)
    except typer.Abort:
        console.error("interrupted")
        _interrupted_exit(argv)
    except MedsegError as exc:
        if console.debug:
            traceback.print_exc()
        console.error(exc.one_line(), exit_code=exc.exit_code)
        if exc.exit_code == EXIT_INTERRUPTED:
            _interrupted_exit(argv)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        console.error("interrupted")
        _interrupted_exit(argv)
    except Exception as exc:
        if console.debug:
            traceback.print_exc()
        console.error(
            f"internal error: {type(exc).__name__}: {exc}. Rerun with --debug and report it.",
            exit_code=EXIT_PROCESSING,
        )
        sys.exit(EXIT_PROCESSING)
    # with standalone_mode=False, click returns (not raises) the code of a `typer.Exit(n)` raised in a command
    code = code if isinstance(code, int) and not isinstance(code, bool) else EXIT_OK
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C (and SIGTERM, above) into a silent 130
        console.error("interrupted")
        _interrupted_exit(argv)
    if code == EXIT_OK and argv is None and state.fast_exit:
        _fast_exit(state.fast_exit[0])
    sys.exit(code)


def _interrupted_exit(argv: list[str] | None) -> NoReturn:
    """Exit 130 after Ctrl-C or SIGTERM, the work handed back, its audit record and message written. A real process
    (`argv` None) ends at once with stdout/stderr flushed: under load, the interpreter teardown after an interrupted
    run sometimes ended in death by SIGINT (exit -2 to a scheduler, not the documented 130); in-process calls raise
    SystemExit as before."""
    import os

    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_INTERRUPTED)


def _fast_exit(request: state.FastExit) -> None:
    """End a successful run at once: every output is already written atomically (fsynced, renamed) and the audit
    end record committed; the folders holding the renames are fsynced and stdout/stderr flushed first. Skips the
    interpreter teardown (0.3-0.45 s of freeing modules and objects here). Only for a real process (`argv` None),
    never for in-process calls; MEDSEG_NO_FAST_EXIT=1 turns it off."""
    import os

    if os.environ.get("MEDSEG_NO_FAST_EXIT") == "1":
        return
    for folder in dict.fromkeys(request.folders):
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_OK)
