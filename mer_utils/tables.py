"""Tables: the numbers this kit computed, and the published ones, never in one column.

``results_table`` (Table 2 and 4 layout) and ``megc_table`` (Table 3 layout) hold what this
kit computed, each followed by the chance level of its metrics for the data's class balance
(``chance_rows``); ``LITERATURE_MEGC2019`` holds what other authors reported on the real
MEGC2019 composite (docs/method.md section 4), in its own table. ``training_note`` says how each
CropNet row was trained (weights, epochs, image size, augmentation).
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mer_utils.errors import ConfigError
from mer_utils.evaluate import interval_text

DECIMALS = 4
DATASET_NAMES = {"smic": "SMIC", "casme2": "CASME II", "samm": "SAMM"}  # Table 3's column order
INTERVAL_COLUMN = "UF1 95% interval"  # bootstrap over the scored clips (evaluate.bootstrap_interval)
METHOD_NAMES = {"ars": "ARS", "rrs": "RRS", "farneback": "Farneback", "tvl1": "TV-L1", "lbptop": "LBP-TOP"}


def _metrics_of(entry) -> dict:
    """A metrics dict from an ExperimentResult (``.metrics``) or a metrics dict."""
    metrics = getattr(entry, "metrics", entry)
    if not isinstance(metrics, Mapping) or not {"accuracy", "uf1", "uar"} <= set(metrics):
        raise ConfigError(
            f"expected an ExperimentResult or a metrics dict with accuracy, uf1 and uar, got {type(entry).__name__}"
        )
    return metrics


def results_table(experiments: Mapping[str, object], chance: bool = True) -> pd.DataFrame:
    """Accuracy, UF1 and UAR of each experiment (rows in the given order), rounded.

    ``experiments`` maps a row name ("ARS + CropNet") to an ExperimentResult or to the
    metrics dict of ``mer_utils.evaluate.compute_metrics``; ``n`` is the number of scored
    samples (all LOSO folds concatenated, the MEGC2019 definition) and ``folds`` the
    completed folds out of all ("6/6"; fewer when a run was restricted to some folds).
    With ``chance``, two more rows give the scores of a uniform random guess and of always
    guessing the majority class on the same test samples (first experiment's class balance).
    ``UF1 95% interval`` is the bootstrap interval over the scored clips
    (``mer_utils.evaluate.bootstrap_interval``; "-" for the chance rows and for metrics
    computed before the kit reported one).
    """
    rows = {}
    for name, entry in experiments.items():
        m = _metrics_of(entry)
        rows[name] = {"Accuracy": m["accuracy"], "UF1": m["uf1"], INTERVAL_COLUMN: interval_text(m.get("interval")),
                      "UAR": m["uar"], "n": m.get("n"), "folds": _folds_done(m)}
    if chance and experiments:
        first = _metrics_of(next(iter(experiments.values())))
        for label, scores in chance_rows(first).items():
            rows[label] = {"Accuracy": scores["accuracy"], "UF1": scores["uf1"], INTERVAL_COLUMN: "-",
                           "UAR": scores["uar"], "n": first.get("n"), "folds": "chance"}
    columns = ["Accuracy", "UF1", INTERVAL_COLUMN, "UAR", "n", "folds"]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    table.index.name = "method"
    return table.round(DECIMALS)


CHANCE_ROW = "chance: "  # how the chance rows of a computed table are named ("chance: uniform random guess")


def chance_rows(metrics: Mapping) -> dict[str, dict]:
    """The chance levels of a metrics dict's test samples (its confusion matrix's true
    counts), as two labelled rows: "chance: uniform random guess" and "chance: always
    <majority class>" (``mer_utils.evaluate.chance_scores``); per dataset under
    ``per_dataset`` when the metrics have one."""
    from mer_utils.evaluate import chance_scores

    def support(confusion) -> np.ndarray:  # true class counts: the confusion matrix's row sums
        return np.asarray(confusion).sum(axis=1)

    overall = support(metrics["confusion"])
    majority = list(metrics["classes"])[int(overall.argmax())]
    names = {"uniform": f"{CHANCE_ROW}uniform random guess", "majority": f"{CHANCE_ROW}always {majority!r}"}
    rows = {names[key]: dict(values) for key, values in chance_scores(overall).items()}
    for dataset, scores in (metrics.get("per_dataset") or {}).items():
        per = chance_scores(support(scores["confusion"]))
        for key in names:
            rows[names[key]].setdefault("per_dataset", {})[dataset] = per[key]
    return rows


def chance_note(metrics: Mapping, clips: str = "these clips") -> str:
    """The chance accuracy of a metrics dict's test clips as a report note, beside an
    accuracy (:func:`chance_rows`): "chance accuracy on {clips} 0.2000 (uniform random
    guess), 0.3333 (always the most frequent class)"."""
    uniform, majority = chance_rows(metrics).values()
    return (f"chance accuracy on {clips} {uniform['accuracy']:.{DECIMALS}f} (uniform random guess), "
            f"{majority['accuracy']:.{DECIMALS}f} (always the most frequent class)")


def chance_summary(table: pd.DataFrame, column: str = "UF1", what: str = "") -> str:
    """The chance rows of a computed table (:func:`results_table`, :func:`megc_table`: the
    rows whose ``folds`` is "chance") as one note for the reports' index, beside the key
    numbers it lists: "Table 2: chance UF1 0.1938 (uniform random guess), 0.1040 (always
    'others'); UAR 0.2000, 0.2000" with ``what`` "Table 2". The UAR column matching a UF1
    ``column`` ("UAR full" for "UF1 full") follows when the table has it."""
    chance = table[table["folds"] == "chance"]
    parts = [f"{float(value):.{DECIMALS}f} ({str(label).removeprefix(CHANCE_ROW)})"
             for label, value in zip(chance.index, chance[column])]
    text = f"{what + ': ' if what else ''}chance {column} " + ", ".join(parts)
    recall = column.replace("UF1", "UAR")
    if recall != column and recall in table.columns:
        text += f"; {recall} " + ", ".join(f"{float(value):.{DECIMALS}f}" for value in chance[recall])
    return text


def chance_levels(table: pd.DataFrame, columns: Sequence[str] = ("UF1", "UAR"),
                  row: str = f"{CHANCE_ROW}uniform random guess") -> dict[str, float]:
    """One chance row of a computed table as figure reference lines: {"chance UF1 (uniform
    random guess)": 0.19, "chance UAR (uniform random guess)": 0.2}."""
    what = row.removeprefix(CHANCE_ROW)
    return {f"chance {column} ({what})": float(table.loc[row, column]) for column in columns}


def _folds_done(metrics: Mapping) -> str:
    folds = metrics.get("folds") or {}
    return f"{folds['completed']}/{folds['total']}" if "completed" in folds and "total" in folds else "-"


def _megc_columns() -> list[str]:
    return [f"{metric} {part}" for part in ("full", *DATASET_NAMES.values()) for metric in ("UF1", "UAR")]


def megc_table(experiments: Mapping[str, object], chance: bool = True) -> pd.DataFrame:
    """Table 3 layout: UF1 and UAR on the full composite and per dataset (SMIC, CASME II,
    SAMM), one row per experiment, and the completed folds. A dataset absent from the run is
    NaN. With ``chance``, two rows give a uniform random guess and always guessing the
    majority class (of the whole composite) on the same test samples, per column.
    ``UF1 95% interval full`` is the bootstrap interval of the full composite's UF1 over its
    clips (``mer_utils.evaluate.bootstrap_interval``)."""
    metrics = {name: _metrics_of(entry) for name, entry in experiments.items()}
    rows = {name: _megc_row(m) for name, m in metrics.items()}
    folds = [_folds_done(m) for m in metrics.values()]
    intervals = [interval_text(m.get("interval")) for m in metrics.values()]
    if chance and metrics:
        for label, scores in chance_rows(next(iter(metrics.values()))).items():
            rows[label] = _megc_row(scores)
            folds.append("chance")
            intervals.append("-")
    table = pd.DataFrame.from_dict(rows, orient="index", columns=_megc_columns()).astype(float).round(DECIMALS)
    table.insert(1, f"{INTERVAL_COLUMN} full", intervals)
    table["folds"] = folds
    table.index.name = "method"
    return table


def _megc_row(m: Mapping) -> dict:
    row = {"UF1 full": m["uf1"], "UAR full": m["uar"]}
    per_dataset = m.get("per_dataset") or {}  # absent when the scored folds hold one dataset
    for key, label in DATASET_NAMES.items():
        scores = per_dataset.get(key, {})
        row[f"UF1 {label}"] = scores.get("uf1", np.nan)
        row[f"UAR {label}"] = scores.get("uar", np.nan)
    return row


def _literature() -> pd.DataFrame:
    # docs/method.md section 4: (UF1, UAR) full, SMIC, CASME II, SAMM, as published, and where.
    published = {
        "LBP-TOP (challenge baseline)": ((.5882, .5785, .2000, .5280, .7026, .7429, .3954, .4102),
                                         "the MEGC2019 organisers: See et al., FG 2019"),
        "OFF-ApexNet": ((.7196, .7096, .6817, .6695, .8764, .8681, .5409, .5392),
                        "its authors: Gan et al., Signal Process. Image Commun. 2019"),
        "STSTNet": ((.7353, .7605, .6801, .7013, .8382, .8686, .6588, .6810), "its authors: Liong et al., FG 2019"),
        "EMR (challenge winner)": ((.7885, .7824, .7461, .7530, .8293, .8209, .7754, .7152),
                                   "its authors: Liu et al., FG 2019"),
        "HTNet": ((.8603, .8475, .8049, .7905, .9532, .9516, .8131, .8124),
                  "its authors: Wang et al., Neurocomputing 2024 (after the paper, not in its Table 3)"),
    }
    table = pd.DataFrame.from_dict({name: values for name, (values, _) in published.items()}, orient="index",
                                   columns=_megc_columns())
    table.index.name = "method"
    table["reported by"] = [source for _, source in published.values()]
    return table


LITERATURE_MEGC2019 = _literature()  # published MEGC2019 composite results, not computed here


def save_table(table: pd.DataFrame, path_stem: str | os.PathLike, title: str = "") -> list[Path]:
    """Write ``table`` as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.html`` (title on top of
    the last two); returns the three paths."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, html_path = (stem.with_name(stem.name + ext) for ext in (".csv", ".md", ".html"))
    table.to_csv(csv_path)
    heading = f"**{title}**\n\n" if title else ""
    md_path.write_text(heading + markdown_table(table) + "\n", encoding="utf-8")
    caption = f"<h3>{html.escape(title)}</h3>\n" if title else ""
    html_path.write_text(caption + table.to_html(na_rep="-", border=0) + "\n", encoding="utf-8")
    return [csv_path, md_path, html_path]


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-style markdown table (index first); NaN shows as "-"."""
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "-" if math.isnan(value) else f"{value:.{DECIMALS}f}"
        return str(value)

    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, *values in table.itertuples(name=None):
        lines.append("| " + " | ".join([str(name), *map(cell, values)]) + " |")
    return "\n".join(lines)



def weights_description(weights: str | None) -> str:
    """How a CropNet backbone started: "ImageNet weights (timm)", "local weights <file>" or
    "from scratch (no ImageNet weights)"."""
    if weights == "imagenet":
        return "from timm's ImageNet weights"
    if weights:
        return f"from local weights {Path(weights).name}"
    return "from scratch (no ImageNet weights)"


def epochs_text(epochs: int, noun: str = "epoch") -> str:
    """"1 epoch", "12 epochs" (or "12 training epochs" with ``noun``): how reports count epochs."""
    return f"{epochs} {noun}{'' if epochs == 1 else 's'}"


def ensemble_text(ensemble: int, seed: int) -> str:
    """How reports name the networks after a model's other settings: ", one network (seed
    0)" (the paper's), or ", 2 networks (seeds 0..1), softmax averaged"."""
    if ensemble == 1:
        return f", one network (seed {seed})"
    return f", {ensemble} networks (seeds {seed}..{seed + ensemble - 1}), softmax averaged"


def fold_training_note(record: Mapping, config=None) -> str:
    """How one fold was trained, from its ``fold.json`` record and, when given, its
    :class:`~mer_utils.config.ExperimentConfig` (notebook 03's note): "CropNet trained from
    scratch (no ImageNet weights), 12 training epochs, one network (seed 0), lr 0.001 ...",
    the weights as the fold recorded them and the rest as :func:`training_text` (without a
    configuration: epochs and networks only); "linear SVM" for the LBP-TOP baseline."""
    losses = record.get("epoch_losses") or []
    if not losses:
        return "linear SVM"
    if config is None:
        return epochs_text(len(losses), "training epoch") + ensemble_text(1, 0)
    config = config.resolved()
    where = device_text([record])
    return (f"CropNet trained {weights_description(record.get('weights', config.pretrained_weights))}, "
            + epochs_text(len(losses), "training epoch") + ensemble_text(config.ensemble, config.seed)
            + ", " + training_text(config) + (f", {where}" if where else ""))


def device_counts(records: Sequence[Mapping]) -> dict[tuple[str, str, str], int]:
    """CropNet folds per (device type, precision, processor) in these ``fold.json`` records
    ("" where a record does not give one: older folds)."""
    counts: dict[tuple[str, str, str], int] = {}
    for record in records:
        if record.get("device") and record.get("epoch_losses"):
            key = (str(record["device"]).split(":")[0], str(record.get("precision") or ""),
                   str(record.get("processor") or ""))
            counts[key] = counts.get(key, 0) + 1
    return counts


def device_text(records: Sequence[Mapping]) -> str:
    """Where CropNet folds were trained, from their ``fold.json`` records: "on the CPU
    (float32; Intel(R) Xeon(R) Processor, AVX512)", "on CUDA (bfloat16; NVIDIA H200)", or, for
    an experiment whose folds were trained on more than one (resumed on another machine, a
    cluster of several kinds), "on the CPU (float32; ...) for 3 folds and CUDA (bfloat16; ...)
    for 23 folds (they differ by rounding)". The processor matters on the CPU too: the same
    fold on another instruction set gives other digits (README, "Reproducibility"). Empty for
    records without a device (LBP-TOP's, older ones)."""
    counts = device_counts(records)

    def name(device: str, precision: str, processor: str) -> str:
        details = "; ".join(part for part in (precision, processor) if part)
        return ("the CPU" if device == "cpu" else device.upper()) + (f" ({details})" if details else "")

    if len(counts) == 1:
        return f"on {name(*next(iter(counts)))}"
    parts = [f"{name(*key)} for {n} fold{'' if n == 1 else 's'}" for key, n in sorted(counts.items())]
    return ("on " + ", ".join(parts[:-1]) + " and " + parts[-1] + " (they differ by rounding)") if parts else ""


def rates_text(lr: float, fc_lr: float | None = None) -> str:
    """The two peak learning rates as reports word them: "lr 0.001 (fully connected layers
    0.0001)"; without ``fc_lr`` (model cards older than the setting) the first only."""
    return f"lr {lr:g}" + (f" (fully connected layers {fc_lr:g})" if fc_lr is not None else "")


def training_text(config) -> str:
    """A CropNet configuration's settings after its epochs and networks, as every training note
    words them: "lr 0.001 (fully connected layers 0.0001), batch 4, at 64 px, the paper's flip
    and rotation only, tested with BatchNorm statistics of the un-augmented training images"."""
    from mer_utils.train import AUGMENTATION_TEXT

    text = (f"{rates_text(config.lr, config.fc_lr)}, batch {config.batch_size}, "
            f"at {config.image_size} px, {AUGMENTATION_TEXT[config.augmentation]}")
    if config.recalibrate_bn:
        return text + ", tested with BatchNorm statistics of the un-augmented training images"
    return text + ", tested with BatchNorm running averages (as the paper)"


def training_note(experiments: Mapping[str, object]) -> str:
    """How each CropNet experiment was trained, as its folds recorded it (``fold.json``:
    "weights"): from scratch, from timm's ImageNet weights or from a local file, with its
    epochs, learning rate, batch size, input size, training augmentation and, for an ensemble,
    its networks per fold, and where its folds were trained (:func:`device_text`). LBP-TOP
    rows are named as the baseline."""
    from mer_utils.files import fold_records

    groups: dict[str, list[str]] = {}
    baseline = []
    for name, entry in experiments.items():
        config = getattr(entry, "config", None)
        if config is None:
            continue
        if config.method == "lbptop":
            baseline.append(name)
            continue
        config = config.resolved()
        records = fold_records(getattr(entry, "fold_dirs", {}).values())
        used = {r.get("weights", config.pretrained_weights) for r in records} or {config.pretrained_weights}
        start = " / ".join(sorted(weights_description(w) for w in used))
        where = device_text(records)
        how = (f"CropNet trained {start}, {epochs_text(config.epochs)} (fixed before the run)"
               f"{ensemble_text(config.ensemble, config.seed)}, {training_text(config)}"
               + (f", {where}" if where else ""))
        groups.setdefault(how, []).append(name)
    parts = [f"{how}: {', '.join(names)}." for how, names in groups.items()]
    if baseline:
        parts.append(f"{', '.join(baseline)}: LBP-TOP features and a linear SVM (no network).")
    return " ".join(parts)
