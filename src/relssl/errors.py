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
