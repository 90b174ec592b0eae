"""Expected errors: the command line prints them as one line and exits non-zero, no traceback."""

import re


class TicketlabError(Exception):
    """A user-facing error: bad input, a file that does not fit, an impossible request."""


class MaskMismatchError(TicketlabError):
    """A mask does not fit the model it is applied to (names, shapes or weights)."""


class MaskFormatError(TicketlabError):
    """A mask file is missing, corrupt, or not a ticketlab mask."""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, bold) that libraries put in messages."""
    return _ANSI.sub("", text)


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of an error's message, plain text, for a one-line report.

    torch's refusal of an unsafe pickle is summarised without its advice to load with
    ``weights_only=False``: ticketlab never suggests a load that can run code.
    """
    text = strip_ansi(str(error)).strip()
    if "Weights only load failed" in text:
        found = _UNSAFE_GLOBAL.search(text)
        if found:
            return (
                f"it holds pickled Python objects ({found.group(1)}), which a safe load refuses: "
                "only tensors are read"
            )
        detail = text.partition("WeightsUnpickler error:")[2].strip().splitlines()
        return "a safe load cannot read it: " + (detail[0].strip() if detail else "not a torch file")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
