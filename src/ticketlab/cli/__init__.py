"""The ``ticketlab`` command. Each verb lives in a small module that registers its parser."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from ticketlab import __version__
from ticketlab.errors import TicketlabError, strip_ansi


def _verb_modules() -> list:
    """Every module of this package with a ``register(verbs)`` function, in help order.

    Discovered rather than listed, so adding a verb is adding a module.
    """
    import importlib
    import pkgutil

    import ticketlab.cli as package

    modules = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"ticketlab.cli.{info.name}")
        if hasattr(module, "register"):
            modules.append(module)
    return sorted(modules, key=lambda m: (getattr(m, "HELP_ORDER", 50), m.__name__))


class _OneLineParser(argparse.ArgumentParser):
    """Argument errors as one line too (``ticketlab VERB: error: ...``), status 2, like argparse's,
    without the usage block a script would have to skip."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="ticketlab",
        description="Lottery tickets in pre-trained transformers: find, inspect, compare and use sparse subnetworks.",
    )
    parser.add_argument("--version", action="version", version=f"ticketlab {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in _verb_modules():
        module.register(verbs)
    return parser


def _quiet_libraries(quiet: bool) -> None:
    """Keep transformers' load reports and weight-loading bars out of ticketlab's own output."""
    import transformers

    if not os.environ.get("TICKETLAB_VERBOSE"):
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
        logging.getLogger("ticketlab").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: expected errors become one line on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries(quiet=getattr(args, "quiet", False))
    # Under torchrun / accelerate launch every process runs the verb; one report is enough (the
    # first process's), and the others' errors still reach stderr.
    quiet_rank = int(os.environ.get("RANK", "0")) != 0
    try:
        from ticketlab.cli.common import check_outputs

        check_outputs(args)
        with contextlib.ExitStack() as stack:
            if quiet_rank:
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            return int(args.run(args) or 0)
    except TicketlabError as error:
        # One line, plain text, whatever a library put into the message.
        message = " ".join(strip_ansi(str(error)).split())
        print(f"ticketlab {args.verb}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ticketlab {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
