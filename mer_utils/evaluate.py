"""Metrics of the MEGC2019 protocol, the predictions table, and confusion-matrix figures.

MEGC2019 definition (docs/method.md section 3): the predictions of **all** LOSO folds are
concatenated first, then

* UF1 = mean over classes c of 2 TP_c / (2 TP_c + FP_c + FN_c),
* UAR = mean over classes c of TP_c / N_c (N_c = samples of class c),
* accuracy = correct / all.

Per-fold scores are never averaged: a LOSO fold holds one subject and often lacks whole
classes, so its UF1 is meaningless on its own.

A class with N_c = 0 in the ground truth (a subset with no ``surprise``, say) has no
recall and no meaningful F1; it is left out of both averages, as the MEGC2019
definition averages over the classes of the evaluated set. Predictions *of* that class
still count, as errors of the true classes. Every such exclusion is written to the
``notes`` of :func:`compute_metrics`.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from mer_utils.files import atomic_write_text
from mer_utils.errors import EvaluationError  # noqa: F401  (re-exported for callers of evaluate)

KEY_COLUMNS = ("dataset", "subject", "clip")
LABEL_COLUMNS = ("true_label", "pred_label")
REQUIRED_COLUMNS = KEY_COLUMNS + LABEL_COLUMNS
PROB_PREFIX = "prob_"
_LIST_LIMIT = 10  # samples named in an error message before "... and N more"


# --------------------------------------------------------------------------- metrics


def confusion(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class, in ``classes`` order."""
    classes = list(classes)
    y_true = [str(v) for v in y_true]
    y_pred = [str(v) for v in y_pred]
    if len(y_true) != len(y_pred):
        raise EvaluationError(
            f"{len(y_true)} true labels but {len(y_pred)} predicted labels")
    if len(set(classes)) != len(classes):
        raise EvaluationError(f"classes repeat: {classes}")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(y_true + y_pred) - set(index))
    if unknown:
        raise EvaluationError(f"labels {unknown} are not among the classes {classes}")
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    if y_true:
        np.add.at(matrix, ([index[v] for v in y_true], [index[v] for v in y_pred]), 1)
    return matrix


def _present(matrix: np.ndarray) -> np.ndarray:
    """Mask of the classes that occur in the ground truth (non-empty rows)."""
    return matrix.sum(axis=1) > 0


def _f1_per_class(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(float)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def _recall_per_class(matrix: np.ndarray) -> np.ndarray:
    tp = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    return np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)


def _uf1_from_confusion(matrix: np.ndarray) -> float:
    present = _present(matrix)
    if not present.any():
        raise EvaluationError("no samples: UF1 is undefined")
    return float(_f1_per_class(matrix)[present].mean())


def _uar_from_confusion(matrix: np.ndarray) -> float:
    present = _present(matrix)
    if not present.any():
        raise EvaluationError("no samples: UAR is undefined")
    return float(_recall_per_class(matrix)[present].mean())


def _accuracy_from_confusion(matrix: np.ndarray) -> float:
    total = int(matrix.sum())
    if total == 0:
        raise EvaluationError("no samples: accuracy is undefined")
    return float(np.trace(matrix) / total)


def uf1(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> float:
    """Unweighted F1: mean over ground-truth classes of 2TP/(2TP+FP+FN) (MEGC2019)."""
    return _uf1_from_confusion(confusion(y_true, y_pred, classes))


def uar(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> float:
    """Unweighted average recall: mean over ground-truth classes of TP/N_c (MEGC2019)."""
    return _uar_from_confusion(confusion(y_true, y_pred, classes))


def accuracy(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> float:
    """Correct predictions over all predictions."""
    return _accuracy_from_confusion(confusion(y_true, y_pred, classes))


# ------------------------------------------------------------------ predictions table


def prob_columns(df: pd.DataFrame) -> list[str]:
    """The ``prob_<class>`` columns, in table order."""
    return [c for c in df.columns if str(c).startswith(PROB_PREFIX)]


def classes_from_frame(df: pd.DataFrame) -> list[str]:
    """Class names in protocol order: from the ``prob_`` columns, else the sorted labels.
    (Scoring uses :func:`resolve_classes`, which never takes the labels as the classes.)"""
    probs = prob_columns(df)
    if probs:
        return [c[len(PROB_PREFIX):] for c in probs]
    labels = set(df["true_label"].astype(str)) | set(df["pred_label"].astype(str))
    return sorted(labels)


def check_labels(df: pd.DataFrame, classes: Sequence[str], source: str, origin: str = "") -> None:
    """Every true and predicted label is one of ``classes``; else EvaluationError naming the
    first offending row (its file line, header = line 1), the sample and the label."""
    allowed = set(classes)
    for column in LABEL_COLUMNS:
        bad = ~df[column].astype(str).isin(allowed)
        if bad.any():
            index = int(np.flatnonzero(bad.to_numpy())[0])
            row = df.iloc[index]
            others = int(bad.sum()) - 1
            raise EvaluationError(
                f"{source} line {index + 2} ({row_key(row['dataset'], row['subject'], row['clip'])}): "
                f"{column} {row[column]!r} is not one of the classes {', '.join(classes)}{origin}"
                + (f" ({others} more such row(s))" if others else ""))


def resolve_classes(df: pd.DataFrame, source: str, protocol: str | None = None,
                    classes: Sequence[str] | None = None) -> list[str]:
    """The classes a predictions table is scored over, never invented from its labels (a typo
    such as ``suprise`` would become a class of its own): ``classes`` if given, else the
    ``protocol``'s, else the ``prob_`` columns, else the one protocol whose classes hold every
    label. Every label must then be one of them (EvaluationError naming the row)."""
    from mer_utils.data.protocols import PROTOCOLS

    if classes is not None and protocol is not None:
        raise EvaluationError("give the classes or the protocol, not both")
    if protocol is not None:
        if protocol not in PROTOCOLS:
            raise EvaluationError(f"unknown protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
        classes, origin = list(PROTOCOLS[protocol].classes), f" of protocol {protocol}"
    elif classes is not None:
        classes, origin = [str(c).strip() for c in classes], " given"
        if not classes or "" in classes or len(set(classes)) != len(classes):
            raise EvaluationError(f"classes {classes}: expected distinct, non-blank class names")
    elif prob_columns(df):
        classes, origin = classes_from_frame(df), " of its prob_ columns"
    else:
        labels = set(df["true_label"].astype(str)) | set(df["pred_label"].astype(str))
        fitting = [name for name, proto in PROTOCOLS.items() if labels <= set(proto.classes)]
        if len(fitting) > 1:
            raise EvaluationError(f"{source}: the labels {', '.join(sorted(labels))} fit protocols "
                                  f"{' and '.join(fitting)}; say which with --protocol (or --classes)")
        # none fitting: the protocol sharing most labels names the row with the odd label
        name = fitting[0] if fitting else max(PROTOCOLS, key=lambda n: len(labels & set(PROTOCOLS[n].classes)))
        classes = list(PROTOCOLS[name].classes)
        origin = (f" of protocol {name} (inferred from the labels)" if fitting else
                  f" of protocol {name}, the closest (no protocol holds all the labels; "
                  f"pass --protocol or --classes if it is another)")
    check_labels(df, classes, source, origin)
    return classes


def _validate_frame(df: pd.DataFrame, source: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise EvaluationError(
            f"{source}: missing column(s) {missing}; a predictions table needs "
            f"{list(REQUIRED_COLUMNS)} and prob_<class> for each class")
    for column in REQUIRED_COLUMNS:
        blank = df[column].isna() | (df[column].astype(str).str.strip() == "")
        if blank.any():
            lines = ", ".join(str(int(i) + 2) for i in np.flatnonzero(blank.to_numpy())[:_LIST_LIMIT])
            raise EvaluationError(f"{source}: column {column!r} is empty on line(s) {lines} (the header is line 1)")
    for column in prob_columns(df):
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna() | (values < 0) | (values > 1)
        if bad.any():
            lines = ", ".join(str(int(i) + 2) for i in np.flatnonzero(bad.to_numpy())[:_LIST_LIMIT])
            raise EvaluationError(f"{source}: column {column!r} must hold probabilities in [0, 1]; line(s) {lines} "
                                  "(the header is line 1) do not")


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a predictions CSV; labels, subjects and clips stay strings (``006`` is not 6)."""
    path = Path(path)
    if path.is_dir():
        raise EvaluationError(f"{path}: is a folder, not a predictions CSV (an experiment folder holds "
                              "predictions.csv)")
    if not path.is_file():
        raise EvaluationError(f"{path}: predictions file not found")
    text_columns = {c: str for c in REQUIRED_COLUMNS}
    expected = f"expected a predictions CSV with columns {', '.join(REQUIRED_COLUMNS)}, prob_<class>..."
    try:
        df = pd.read_csv(path, dtype=text_columns, keep_default_na=False, na_values=[])
    except pd.errors.EmptyDataError:
        size = path.stat().st_size
        what = "is empty (0 bytes)" if size == 0 else f"holds no CSV header ({size} bytes of blank lines)"
        raise EvaluationError(f"{path}: the file {what}; {expected}") from None
    except UnicodeDecodeError as err:
        raise EvaluationError(f"{path}: not a text CSV file (byte {err.object[err.start]:#04x} at offset "
                              f"{err.start} is not UTF-8: a binary file?); {expected}") from None
    except (pd.errors.ParserError, ValueError, OverflowError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise EvaluationError(f"{path}: cannot be read as CSV ({reason}); {expected}") from None
    header = _header(path)
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:  # pandas would rename the second one ("prob_x.1") and read on
        raise EvaluationError(f"{path}: column(s) {', '.join(repeated)} appear more than once in its header; {expected}")
    for column in prob_columns(df):
        df[column] = pd.to_numeric(df[column], errors="coerce")
    _validate_frame(df, str(path))
    return df


def _header(path: Path) -> list[str]:
    """The column names of a CSV file's first row, as written (pandas renames repeats)."""
    import csv

    with open(path, encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle), [])


def write_predictions(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a predictions table atomically (temp file in the same folder, then rename).

    Columns come out as dataset, subject, clip, true_label, pred_label, the prob_ columns
    in their order, then any other columns.
    """
    path = Path(path)
    _validate_frame(df, f"predictions for {path}")
    probs = prob_columns(df)
    other = [c for c in df.columns if c not in REQUIRED_COLUMNS and c not in probs]
    ordered = df[list(REQUIRED_COLUMNS) + probs + other]
    atomic_write_text(path, ordered.to_csv(index=False))
    return path


def row_key(dataset: str, subject: str, clip: str) -> str:
    """Sample key of a predictions row, equal to ``Sample.key`` (``casme2/sub01/EP02_01f``).

    ``subject`` is the LOSO subject_id; under megc2019 it already carries the dataset
    prefix (``casme2/sub01``), which is not repeated.
    """
    dataset, subject, clip = str(dataset), str(subject), str(clip)
    if not subject.startswith(f"{dataset}/"):
        subject = f"{dataset}/{subject}"
    return f"{subject}/{clip}"


def _row_keys(df: pd.DataFrame) -> list[str]:
    return [row_key(d, s, c) for d, s, c in zip(df["dataset"], df["subject"], df["clip"])]


def _name_some(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    more = len(keys) - _LIST_LIMIT
    return shown + (f" ... and {more} more" if more > 0 else "")


def check_coverage(df: pd.DataFrame, expected_keys: Iterable | None = None) -> None:
    """Each sample is predicted exactly once (and, given ``expected_keys``, every one is).

    ``expected_keys``: sample keys (``Sample.key`` strings) or Sample objects. Raises
    EvaluationError naming the duplicated, missing or unexpected samples.
    """
    keys = _row_keys(df)
    counts = pd.Series(keys, dtype=object).value_counts(sort=False)
    duplicated = [f"{k} (x{n})" for k, n in counts.items() if n > 1]
    if duplicated:
        raise EvaluationError(
            f"{len(duplicated)} sample(s) predicted more than once: {_name_some(duplicated)}")
    if expected_keys is None:
        return
    expected = [getattr(k, "key", k) for k in expected_keys]
    have, want = set(keys), set(expected)
    missing = sorted(want - have)
    unexpected = sorted(have - want)
    problems = []
    if missing:
        problems.append(f"{len(missing)} expected sample(s) have no prediction: "
                        f"{_name_some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} predicted sample(s) are not in the sample list: "
                        f"{_name_some(unexpected)}")
    if problems:
        raise EvaluationError("; ".join(problems))


# ------------------------------------------------------------------ bootstrap interval

INTERVAL_LEVEL = 0.95  # coverage of the intervals ``compute_metrics`` reports
INTERVAL_RESAMPLES = 2000  # bootstrap resamples of the scored clips
INTERVAL_SEED = 0  # fixed, so a table's interval is the same every time it is computed


def resample_indices(n: int, resamples: int = INTERVAL_RESAMPLES, seed: int = INTERVAL_SEED) -> np.ndarray:
    """(resamples, n) row indices drawn with replacement: the bootstrap's resampled test sets."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def resampled_scores(true_index: np.ndarray, pred_index: np.ndarray, num_classes: int,
                     rows: np.ndarray) -> dict[str, np.ndarray]:
    """UF1 and UAR of every resampled test set (``rows``: one row of sample indices per
    resample), exactly as :func:`compute_metrics` scores one set: each resample's confusion
    matrix, its absent classes left out of both averages."""
    resamples = rows.shape[0]
    cells = true_index[rows] * num_classes + pred_index[rows] + (np.arange(resamples) * num_classes ** 2)[:, None]
    matrices = np.bincount(cells.ravel(), minlength=resamples * num_classes ** 2)
    matrices = matrices.reshape(resamples, num_classes, num_classes).astype(float)
    tp = np.diagonal(matrices, axis1=1, axis2=2)
    support = matrices.sum(axis=2)
    predicted = matrices.sum(axis=1)
    present = support > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    counts = present.sum(axis=1)
    return {"uf1": (f1 * present).sum(axis=1) / counts, "uar": (recall * present).sum(axis=1) / counts}


def bootstrap_interval(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str],
                       level: float = INTERVAL_LEVEL, resamples: int = INTERVAL_RESAMPLES,
                       seed: int = INTERVAL_SEED) -> dict:
    """Percentile bootstrap intervals of UF1 and UAR over the scored clips (Efron and
    Tibshirani 1993, ch. 13): the clips are drawn with replacement ``resamples`` times, each
    draw scored as :func:`compute_metrics` scores the whole set, and the interval is the
    central ``level`` of those scores.

    It measures how far the score could move with another draw of test clips from the same
    source, for these trained models; it does not include the spread between training runs
    (seeds, rounding), which on a small set is as large (docs/tuning.md)."""
    if not 0 < level < 1:
        raise EvaluationError(f"interval level must be between 0 and 1, got {level}")
    if confusion(y_true, y_pred, classes).sum() == 0:  # validates the labels
        raise EvaluationError("no samples: no interval")
    return _interval(y_true, y_pred, classes, level, resamples, seed)


def _interval(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str], level: float = INTERVAL_LEVEL,
              resamples: int = INTERVAL_RESAMPLES, seed: int = INTERVAL_SEED) -> dict:
    """:func:`bootstrap_interval` of labels already checked (by :func:`confusion`)."""
    index = {c: i for i, c in enumerate(classes)}
    true_index = np.array([index[str(v)] for v in y_true])
    pred_index = np.array([index[str(v)] for v in y_pred])
    scores = resampled_scores(true_index, pred_index, len(index), resample_indices(len(true_index), resamples, seed))
    tail = 100 * (1 - level) / 2
    return {"level": level, "resamples": resamples, "seed": seed,
            **{name: [float(v) for v in np.percentile(values, [tail, 100 - tail])] for name, values in scores.items()}}


def interval_text(interval: Mapping | None, metric: str = "uf1", decimals: int = 3) -> str:
    """"[0.551, 0.842]" from a metrics dict's ``interval``; "-" without one."""
    if not interval or metric not in interval:
        return "-"
    low, high = interval[metric]
    return f"[{low:.{decimals}f}, {high:.{decimals}f}]"


# ------------------------------------------------------------------------ summaries


def _scores(matrix: np.ndarray) -> dict:
    return {
        "n": int(matrix.sum()),
        "accuracy": _accuracy_from_confusion(matrix),
        "uf1": _uf1_from_confusion(matrix),
        "uar": _uar_from_confusion(matrix),
        "confusion": matrix.tolist(),
    }


def _absence_notes(matrix: np.ndarray, classes: Sequence[str], where: str) -> list[str]:
    return [f"class {c!r} absent from {where} ground truth: left out of UF1/UAR"
            for c, present in zip(classes, _present(matrix)) if not present]


def compute_metrics(df: pd.DataFrame, classes: Sequence[str] | None = None) -> dict:
    """Accuracy, UF1 and UAR of the concatenated predictions of all folds (MEGC2019).

    Returns a JSON-ready dict: ``n, accuracy, uf1, uar, classes, confusion`` (rows true,
    columns predicted), ``per_class`` (``{class: {n, f1, recall}}``), ``notes`` (absent
    classes, one line each) and, only when the table holds more than one dataset,
    ``per_dataset`` (``{dataset: {n, accuracy, uf1, uar, confusion}}``), each dataset
    scored on its own rows with its own absent classes left out, and ``interval`` (95 %
    bootstrap intervals of UF1 and UAR over the clips, :func:`bootstrap_interval`).
    Duplicated samples are an error (they would count twice).
    """
    _validate_frame(df, "predictions table")
    if len(df) == 0:
        raise EvaluationError("predictions table has no rows: nothing to score")
    check_coverage(df)
    classes = list(classes) if classes is not None else classes_from_frame(df)
    matrix = confusion(df["true_label"], df["pred_label"], classes)
    metrics = {**_scores(matrix), "classes": classes,
               "interval": _interval(df["true_label"].tolist(), df["pred_label"].tolist(), classes)}  # labels checked
    metrics["per_class"] = {
        c: {"n": int(n), "f1": float(f), "recall": float(r)}
        for c, n, f, r in zip(classes, matrix.sum(axis=1), _f1_per_class(matrix),
                              _recall_per_class(matrix))
    }
    datasets = sorted(df["dataset"].astype(str).unique())
    where = "the" if len(datasets) > 1 else datasets[0]
    notes = _absence_notes(matrix, classes, where)
    if len(datasets) > 1:
        metrics["per_dataset"] = {}
        for name in datasets:
            rows = df[df["dataset"].astype(str) == name]
            sub = confusion(rows["true_label"], rows["pred_label"], classes)
            metrics["per_dataset"][name] = _scores(sub)
            notes += _absence_notes(sub, classes, name)
    metrics["notes"] = notes
    return metrics


def metrics_from_file(path: str | os.PathLike, protocol: str | None = None,
                      classes: Sequence[str] | None = None, warn_notes: bool = True) -> dict:
    """Read a predictions CSV, reject duplicated samples, compute the metrics over the
    classes of :func:`resolve_classes` (an unknown label is an error naming its row). Notes on
    the file's probabilities go into ``metrics["notes"]``, and with ``warn_notes`` are also
    warnings (a caller that prints the notes, as ``mer metrics``' table, passes False)."""
    df = read_predictions(path)
    if len(df) == 0:
        raise EvaluationError(f"{path}: predictions table has no rows: nothing to score")
    try:
        metrics = compute_metrics(df, resolve_classes(df, str(path), protocol, classes))
    except EvaluationError as err:  # e.g. a sample predicted twice: name the file too
        if str(path) in str(err):
            raise
        raise EvaluationError(f"{path}: {err}") from None
    metrics["source"] = str(path)
    for note in probability_notes(df):  # scored from pred_label all the same
        if warn_notes:
            warnings.warn(f"{path}: {note}", UserWarning, stacklevel=2)
        metrics["notes"].append(note)
    return metrics


def probability_notes(df: pd.DataFrame) -> list[str]:
    """What does not add up between a table's ``prob_`` columns and its ``pred_label``: rows
    whose predicted class is not (one of) the most probable, and rows whose probabilities do
    not sum to 1 (within 0.01). Lines as the file numbers them (header line 1); none without
    ``prob_`` columns."""
    probs = prob_columns(df)
    if not probs or len(df) == 0:
        return []
    values = df[probs].to_numpy(dtype=float)
    names = [c[len(PROB_PREFIX):] for c in probs]
    predicted = df["pred_label"].astype(str).str.strip().to_numpy()
    own = np.array([values[i, names.index(p)] if p in names else np.nan for i, p in enumerate(predicted)])
    notes = []
    for what, bad in (("pred_label is not the class of the highest prob_ column", ~(own >= values.max(axis=1))),
                      ("the prob_ columns do not sum to 1", np.abs(values.sum(axis=1) - 1.0) > 0.01)):
        rows = np.flatnonzero(bad)
        if len(rows):
            lines = ", ".join(str(int(i) + 2) for i in rows[:_LIST_LIMIT]) + (", ..." if len(rows) > _LIST_LIMIT else "")
            notes.append(f"on {len(rows)} of {len(df)} rows {what} (line(s) {lines}); the metrics use pred_label")
    return notes


def write_metrics(metrics: dict, path: str | os.PathLike) -> Path:
    """Write ``metrics.json`` atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(metrics, indent=1) + "\n")
    return path


def format_metrics(metrics: dict) -> str:
    """A short table: UF1, UAR and accuracy overall and per dataset, then the notes."""
    lines = [f"{'':<10}{'n':>6}{'UF1':>9}{'UAR':>9}{'Acc':>9}"]

    def row(name: str, m: dict) -> str:
        return f"{name:<10}{m['n']:>6}{m['uf1']:>9.4f}{m['uar']:>9.4f}{m['accuracy']:>9.4f}"

    lines.append(row("all", metrics))
    for name, m in metrics.get("per_dataset", {}).items():
        lines.append(row(name, m))
    interval = metrics.get("interval")
    if interval:
        lines.append(f"{interval['level']:.0%} interval over the clips (bootstrap, {interval['resamples']} resamples): "
                     f"UF1 {interval_text(interval, 'uf1', 4)}, UAR {interval_text(interval, 'uar', 4)}")
    lines.append("classes: " + ", ".join(metrics["classes"]))
    lines += [f"note: {note}" for note in metrics.get("notes", [])]
    return "\n".join(lines)


# ------------------------------------------------------------------------- figures




def chance_scores(support: Sequence[int]) -> dict[str, dict[str, float]]:
    """Accuracy, UF1 and UAR of two guesses that ignore the input, for a test set whose true
    class counts are ``support`` (in the protocol's class order; absent classes, count 0,
    are left out of UF1 and UAR as in :func:`compute_metrics`):

    - ``uniform``: every class guessed with probability 1/K over the K protocol classes;
      expected counts, so recall 1/K and precision equal to the class's share p_c, hence
      F1_c = 2 p_c (1/K) / (p_c + 1/K);
    - ``majority``: always the most frequent class: accuracy p_max, UAR 1/K' (K' classes
      present) and UF1 = (2 p_max / (1 + p_max)) / K'.
    """
    counts = np.asarray(support, dtype=float)
    if counts.ndim != 1 or counts.size == 0 or counts.sum() <= 0:
        raise EvaluationError(f"chance_scores needs positive class counts, got {list(support)}")
    k, share = counts.size, counts / counts.sum()
    present = counts > 0
    f1_uniform = 2 * share * (1 / k) / (share + 1 / k)
    p_max = share.max()
    return {
        "uniform": {"accuracy": 1 / k, "uf1": float(f1_uniform[present].mean()), "uar": 1 / k},
        "majority": {"accuracy": float(p_max), "uf1": float(2 * p_max / (1 + p_max) / present.sum()),
                     "uar": float(1 / present.sum())},
    }
