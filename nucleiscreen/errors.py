"""The exceptions the CLI prints as one line (``error: ...``, exit status 2), no traceback: user mistakes, and
results that cannot be written."""


class UserError(Exception):
    """Bad input from the user (a missing folder, an unreadable file, a wrong option).

    The message says what was wrong, where, and what to do; ``nucleiscreen`` prints it as
    ``error: <message>`` and exits with status 2.
    """


class StorageError(UserError):
    """A result that cannot be written (a full disk, a quota, a read-only or vanished folder): the run stops, with
    nothing half-written, and the same command resumes it once the cause is fixed."""

    def __init__(self, path, exc: OSError):
        super().__init__(f"cannot write {path}: {exc.strerror or exc}; free space (or fix the folder) and run the "
                         "same command again: it resumes where it stopped")
