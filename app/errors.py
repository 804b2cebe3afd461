"""The one error type the job raises, and the codes it carries."""

import enum


class ErrorCode(enum.Enum):
    """The reason a run failed; its name starts the ERROR line and the failure message."""

    INVALID_ARGUMENT = enum.auto()
    MODEL_NOT_FOUND = enum.auto()
    HYPERPARAMETERS_NOT_FOUND = enum.auto()
    INVALID_FORMAT = enum.auto()
    INVALID_ARCHIVE = enum.auto()
    UNSAFE_ARCHIVE = enum.auto()
    INVALID_HYPERPARAMETERS = enum.auto()
    OUTPUT_FAILED = enum.auto()
    INTERRUPTED = enum.auto()
    INTERNAL_ERROR = enum.auto()


class RepackError(Exception):
    """A failure the user can act on: a code plus what failed, where, and what to do."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Interrupted(BaseException):
    """Raised from the SIGTERM and SIGINT handlers so every `finally` cleans up.

    It derives from BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way up can swallow it.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
