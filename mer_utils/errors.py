"""Exceptions of the kit. Every message names the file, row, clip or folder at fault."""


class MerError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2."""


class DatasetError(MerError, ValueError):
    """A dataset folder or annotation file does not match its expected layout."""


class PreprocessError(MerError, RuntimeError):
    """A clip could not be preprocessed (no face, unreadable frame, ...)."""


class ConfigError(MerError, ValueError):
    """A run's configuration is invalid or conflicts with an existing experiment."""


class EvaluationError(MerError, ValueError):
    """A predictions table or label set cannot be scored as it stands."""
