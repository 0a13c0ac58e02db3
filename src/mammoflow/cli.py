"""The ``mammoflow`` command line. Each verb lives in ``mammoflow/commands/<verb>.py`` and exposes ``command``.

Verbs are discovered, not listed here, so adding a stage never edits this file. Command modules import heavy
libraries (TensorFlow, Ray, KFP) inside their functions so that ``mammoflow --help`` stays fast.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys

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


@click.group(cls=_Verbs, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mammoflow")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]), help="Logging verbosity.")
def cli(log_level: str) -> None:
    """mammoflow: train, sweep, evaluate and explain mammography classifiers."""
    setup_logging(log_level)


def main() -> None:
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) is not for users; errors still show.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        cli(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except MammoflowError as exc:
        logging.getLogger("mammoflow").error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
