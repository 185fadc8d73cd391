"""Errors with one-line messages that name the problem and the fix."""


class RelsslError(Exception):
    """Base class: everything relssl raises on bad input."""


class ConfigError(RelsslError, ValueError):
    """A configuration key or value is not allowed."""


class DataError(RelsslError):
    """A dataset is missing, has the wrong layout, or is corrupt."""


class CheckpointError(RelsslError):
    """A checkpoint is missing, truncated or not a relssl checkpoint."""


class TrainingError(RelsslError):
    """Training cannot continue (for example a non-finite loss)."""


class RunInterrupted(RelsslError):
    """A run stopped on SIGTERM or SIGINT after writing a resumable checkpoint.

    ``exit_code`` is the shell's convention for the signal (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class AlreadyFinished(RelsslError):
    """``--resume`` of a run that has already trained all its steps: nothing to do, nothing changed."""
