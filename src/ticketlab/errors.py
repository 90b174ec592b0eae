"""Expected errors: the command line prints them as one line and exits non-zero, no traceback."""


class TicketlabError(Exception):
    """A user-facing error: bad input, a file that does not fit, an impossible request."""


class MaskMismatchError(TicketlabError):
    """A mask does not fit the model it is applied to (names, shapes or weights)."""


class MaskFormatError(TicketlabError):
    """A mask file is missing, corrupt, or not a ticketlab mask."""
