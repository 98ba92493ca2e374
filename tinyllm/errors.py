"""The one exception type the CLI turns into a single clear line and a non-zero exit.

Raise `TinyLLMError` for anything a user can fix (bad input, missing files, impossible shapes);
the message should say what went wrong, where, and what to do. Anything else is a bug and keeps
its traceback.
"""


class TinyLLMError(Exception):
    """A user-facing error: its message is printed as one line, without a traceback."""
