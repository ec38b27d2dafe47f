"""The one exception type for user mistakes: the CLI prints its message as one line, no traceback."""


class UserError(Exception):
    """Bad input from the user (a missing folder, an unreadable file, a wrong option).

    The message says what was wrong, where, and what to do; ``nucleiscreen`` prints it as
    ``error: <message>`` and exits with status 2.
    """
