"""Where things live, in one place (the cookiecutter-data-science layout)::

    <data_root>/                      raw data: CASME2/, SAMM/, SMIC/ (data/synthetic by default)
    <data_root>/../interim/cache/     the preprocessing cache (data/interim/cache)
    papermill_runs/<notebook>/        executed notebooks with their tables and figures
    papermill_runs/experiments/       LOSO experiment folders, one per configuration, shared by
                                      every notebook that asks for the same experiment
    reports/                          the rendered HTML reports and their index

Relative paths given to notebooks and to the reproduction are taken from the repository root,
so a notebook executed by papermill (working directory ``notebooks/``) finds ``data/synthetic``.
"""
from __future__ import annotations

import os
from pathlib import Path

from mer_utils.errors import ConfigError, DatasetError

PACKAGE_DIR = Path(__file__).resolve().parent
RUNS_DIR = "papermill_runs"  # executed notebooks, relative to the repository root
REPORTS_DIR = "reports"  # rendered HTML
EXPERIMENTS_DIR = f"{RUNS_DIR}/experiments"  # the shared, configuration-keyed experiment store
SYNTHETIC_DIR = "data/synthetic"  # where `make demo` generates the synthetic data
# The environment variable naming a file the LOSO runner appends one line to as each fold
# finishes: `mer reproduce` sets it for each notebook and prints the lines on its console,
# where a notebook's own progress bars are not seen (reproduce.fold_progress).
PROGRESS_ENV = "MER_PROGRESS_FILE"
# Set with $DASK_SCHEDULER_ADDRESS (to the same address) where `mer reproduce` lends its notebooks
# the local cluster it started, so that an error about that scheduler says whose it is.
LENT_SCHEDULER_ENV = "MER_LENT_SCHEDULER"
OFFICIAL_MEGC2019_LIST = PACKAGE_DIR / "resources" / "megc2019_composite.csv"  # shipped MEGC2019 list


def data_root_dir(root: str | os.PathLike, option: str = "the data root") -> Path:
    """``root`` as a Path when it is a folder; else DatasetError in one line, "data root X
    does not exist" or "is not a folder", naming the ``option`` that sets it (``--data-root``,
    ``data_root``) and the way to make synthetic data."""
    root = Path(root)
    if not root.is_dir():
        state = ("is not a folder (it is a file)" if root.is_file() else "is not a folder" if root.exists()
                 else "does not exist")
        raise DatasetError(f"data root {root} {state}: point {option} at a folder holding CASME2/, SAMM/, SMIC/, "
                           "or generate synthetic data with `mer synth --out data/synthetic`")
    return root


def repo_root() -> Path:
    """The repository root: the folder holding ``pyproject.toml`` above this package."""
    root = PACKAGE_DIR.parent
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(
            f"mer_utils is installed outside its repository ({root} has no pyproject.toml): "
            "pass absolute paths instead of paths relative to the repository"
        )
    return root


def repo_path(path: str | os.PathLike) -> Path:
    """``path`` as an absolute Path; a relative one is taken from the repository root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` as the kit writes it into notebooks and reports: relative to the repository
    root when it lies inside it ("papermill_runs/04_casme2_5class"; read back with
    :func:`repo_path`), else absolute; a relative ``path`` is returned as it was given. A
    report then names no folder of the machine it ran on, and two clones' reports of the same
    run read the same."""
    path = Path(path).expanduser()
    if not path.is_absolute():
        return str(path)
    try:
        root = repo_root().resolve()
    except ConfigError:  # the kit installed outside its repository: nothing to be relative to
        return str(path)
    path = path.resolve()
    return (path.relative_to(root).as_posix() or ".") if path.is_relative_to(root) else str(path)


def notebooks_dir() -> Path:
    """The numbered notebooks' folder."""
    return repo_root() / "notebooks"


def default_cache_dir(data_root: str | os.PathLike) -> Path:
    """The preprocessing cache of a data root: ``<data_root>/../interim/cache``
    (``data/synthetic`` -> ``data/interim/cache``), absolute."""
    return Path(data_root).expanduser().resolve().parent / "interim" / "cache"


def megc_list_path(megc_list: str | os.PathLike | None) -> str | None:
    """A MEGC2019 list parameter as a path: "" or None (no list), "official" (the shipped
    list) or a file (relative: from the repository root)."""
    if megc_list is None or not str(megc_list):
        return None
    if str(megc_list) == "official":
        return str(OFFICIAL_MEGC2019_LIST)
    return str(repo_path(megc_list))
