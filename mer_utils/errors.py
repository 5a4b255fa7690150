"""Exceptions of the kit. Every message names the file, row, clip or folder at fault."""


class MerError(Exception):
    """Base class: the CLI prints these as one line and exits with status 2; a notebook cell
    (Jupyter, papermill, the HTML reports) shows them as one line too."""

    def _render_traceback_(self) -> list[str]:
        """IPython's hook for an exception's own traceback (``InteractiveShell.showtraceback``):
        the kit's errors already name the file, row, clip or setting at fault, so a notebook
        shows "DatasetError: data root ... does not exist: ..." without the frames of the
        kit's code that raised it. Other exceptions keep IPython's full traceback."""
        return [f"{type(self).__name__}: {self}"]


class DatasetError(MerError, ValueError):
    """A dataset folder or annotation file does not match its expected layout."""


class PreprocessError(MerError, RuntimeError):
    """A clip could not be preprocessed (no face, unreadable frame, ...)."""


class ConfigError(MerError, ValueError):
    """A run's configuration is invalid or conflicts with an existing experiment."""


class EvaluationError(MerError, ValueError):
    """A predictions table or label set cannot be scored as it stands."""


class TrainingError(MerError, RuntimeError):
    """Training diverged, or a model's weights give no finite prediction."""


class DataWarning(UserWarning):
    """A warning about the sample set as loaded (no official MEGC2019 list, clips left out for
    an unknown emotion). The LOSO runner shows it once per experiment, not again in every fold."""


def check_int(name: str, value, minimum: int = 1, note: str = ""):
    """``value`` when it is an int (not a bool) of at least ``minimum``; else ConfigError
    "``name`` must be a positive integer (``note``), got ..." (or "an integer >= minimum")."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ConfigError(f"{name} must be {kind}{f' ({note})' if note else ''}, got {value!r}")
    return value


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """``warnings.formatwarning`` as the kit shows warnings, on the console (``mer``) and in
    the notebooks (``notebook.one_line_warnings``): one line, "warning: ...", without the
    file, line number and source line of the code that raised it."""
    return f"warning: {message}\n"
