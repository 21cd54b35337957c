"""Exceptions for problems with user input, reported by the CLI as one line and exit status 2."""


class InputError(ValueError):
    """A user-supplied file, folder or option is unusable; the message says which and why."""
