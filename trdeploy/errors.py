"""The one user-facing error type.

Every problem a user can fix (bad input, missing file, a model that does not fit) is raised as
`TrdeployError` with a one-line message that says what is wrong and what to do. The CLI prints it
without a traceback (unless `--debug`) and exits with code 2.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class TrdeployError(Exception):
    """A problem the user can fix. The message is one line: what is wrong, then what to do."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message.strip()
        self.hint = hint.strip() if hint else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.message} {self.hint}" if self.hint else self.message
        # A user's value quoted in the message (a path, a field name) may hold line breaks; shown
        # escaped, the error stays one line for logs and for whoever greps them.
        return text.replace("\r", "\\r").replace("\n", "\\n")
