"""Errors a user can fix. Each message is one line that names the fix.

The CLIs print these without a traceback; everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A bad input or setting; ``str(err)`` is a one-line message that says what to change."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid."""


class ModelLoadError(UserError, OSError):
    """Weights are missing, unreadable or do not fit together."""


class ImageError(UserError, ValueError):
    """An input image or mask cannot be used."""


class PromptError(UserError, ValueError):
    """A prompt or target word cannot be used."""


class StorageError(UserError, OSError):
    """A result cannot be written (full disk, quota, file-size limit, read-only folder); finished work is kept."""


class NonFiniteError(ArithmeticError):
    """A stage produced NaN or infinite values. Not a user error: the sample is recorded as failed, with ``stage``."""

    def __init__(self, stage: str, what: str):
        super().__init__(f"{what} has non-finite values (stage: {stage})")
        self.stage = stage
