"""Errors a user can fix: always one line naming the key, file or row."""


class UserError(Exception):
    """Bad config or input. The message is one line and names what to fix."""
