"""The one exception type for problems a user can cause and fix."""


class UpscaleError(Exception):
    """A user-facing error: its message is one line that says what went wrong and what to do.

    The CLI prints it without a traceback (unless --debug) and exits non-zero.
    """


class UsageError(UpscaleError):
    """The arguments themselves are wrong (a combination that cannot work): the CLI exits with 2."""
