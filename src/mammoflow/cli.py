"""The ``mammoflow`` command line. Each verb lives in ``mammoflow/commands/<verb>.py`` and exposes ``command``.

Verbs are discovered, not listed here, so adding a stage never edits this file. Command modules import heavy
libraries (TensorFlow, Ray, KFP) inside their functions so that ``mammoflow --help`` stays fast.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading

import click

from mammoflow import __version__, commands
from mammoflow.errors import MammoflowError
from mammoflow.logs import setup_logging


class _Verbs(click.Group):
    def _modules(self) -> dict[str, str]:
        return {m.name.replace("_", "-"): m.name for m in pkgutil.iter_modules(commands.__path__)
                if not m.name.startswith("_")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._modules())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        module = self._modules().get(name)
        if module is None:
            return None
        return importlib.import_module(f"mammoflow.commands.{module}").command

    def invoke(self, ctx: click.Context) -> None:
        # Without standalone mode click.main returns what the verb returned; only an Exit's code may come back.
        super().invoke(ctx)


@click.group(cls=_Verbs, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mammoflow")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), help="Logging verbosity.")
def cli(log_level: str) -> None:
    """mammoflow: train, sweep, evaluate and explain mammography classifiers."""
    setup_logging(log_level)


# Exit codes every verb shares (README "Exit codes"); verbs add their own: ingest --strict 3, retrain refused 4,
# train preempted 143.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    """The ``mammoflow`` console script: run one verb and return its documented exit code.

    Click runs with ``standalone_mode=False`` so that errors are reported here, once, in one format; in that mode
    click *returns* the code of ``click.exceptions.Exit`` (how verbs ask for 1, 3, ...) instead of exiting, so it is
    returned here. An unexpected exception prints one line (its type and message) and exits 1; its traceback is
    logged at DEBUG (``mammoflow --log-level DEBUG ...``).
    """
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) is not for users; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log = logging.getLogger("mammoflow")
    previous = _record_ctrl_c()
    try:
        code = cli.main(args=argv, prog_name="mammoflow", standalone_mode=False)
    except SystemExit as exc:  # sys.exit() in a verb
        return _system_exit_code(exc)
    except click.ClickException as exc:  # usage errors (2) and the verbs' own messages (1)
        exc.show()
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _interrupted()
    except Exception as exc:  # noqa: BLE001 - sorted by _error_code
        return _error_code(exc, log)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return code if isinstance(code, int) else EXIT_OK


# Set by the SIGINT handler main() installs: Ctrl-C was pressed during this run.
_CTRL_C = threading.Event()


def _on_ctrl_c(signum: int, frame: object) -> None:
    _CTRL_C.set()
    raise KeyboardInterrupt


def _record_ctrl_c() -> object:
    """Have Ctrl-C remembered as well as raised. Python raises KeyboardInterrupt wherever the main thread is; in a
    Python callback of a C extension (a tf.data generator, a C-level list operation) the extension may turn it into
    another error (``SystemError: ... bad argument to internal function``). Remembered, it still ends the run as
    an interruption (130), not as an unexpected error (1). Returns the handler to put back, or None when Ctrl-C
    is not Python's default here (another thread, or a host program's own handler): then it is left alone."""
    _CTRL_C.clear()
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        return signal.signal(signal.SIGINT, _on_ctrl_c)
    return None


def _interrupted() -> int:
    click.echo("interrupted", err=True)
    return EXIT_INTERRUPTED


def _error_code(exc: Exception, log: logging.Logger) -> int:
    """The exit code and the one line of an error that ended a verb."""
    if _CTRL_C.is_set():  # whatever the error's type, the user's Ctrl-C caused it
        log.debug("error after Ctrl-C", exc_info=True)
        return _interrupted()
    if isinstance(exc, MammoflowError):
        log.error("%s", exc)
    elif isinstance(exc, OSError):
        log.error("%s", os_error_message(exc))
    else:  # the last line of defence: one line, never a raw traceback
        log.error("unexpected error: %s%s", _one_line(exc),
                  "" if log.isEnabledFor(logging.DEBUG) else " (run with --log-level DEBUG for the traceback)")
    log.debug("traceback of the error above", exc_info=True)
    return EXIT_ERROR


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


def _system_exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return EXIT_OK
    if isinstance(exc.code, int):
        return exc.code
    click.echo(str(exc.code), err=True)
    return EXIT_ERROR


def os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: the path, what went wrong and what to do."""
    path = exc.filename if exc.filename is not None else "a file"
    what = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make it writable (and readable) for this user, or give another path"
    elif exc.errno == errno.ENOSPC:
        fix = "free disk space (or give a folder on another disk) and run the same command again: it resumes"
    elif exc.errno == errno.ENOTDIR:
        fix = "a part of this path is a file, not a folder: give another path"
    elif exc.errno == errno.ENOENT:
        fix = "check the path"
    else:
        fix = "check the path, its permissions and the free disk space"
    return f"{path}: {what}. Fix: {fix}"


if __name__ == "__main__":
    sys.exit(main())
