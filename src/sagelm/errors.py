"""The one base class of errors a user can fix (a bad file, flag or row): the CLI reports them in one line
with exit status 1. Anything else is a bug (exit 3)."""

from __future__ import annotations


class SagelmError(Exception):
    """A problem with the user's files, flags or data; the message names the file/row and the problem."""
