"""Exceptions whose message is shown to the user as one line, never as a traceback."""


class FlowsrError(Exception):
    """A problem the user can act on; reported as one line, exit code 1."""

    exit_code = 1


class UsageError(FlowsrError):
    """Bad command-line usage or configuration; exit code 2."""

    exit_code = 2


class ImageError(FlowsrError):
    """One image cannot be read, decoded or written; the message names the problem, not the file."""
