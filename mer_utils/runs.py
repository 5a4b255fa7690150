"""Leave-one-subject-out experiments (paper 4.2): one fold per subject, fanned out on Dask,
resumable.

Layout of an experiment folder (``out_dir``, e.g. ``papermill_runs/<experiment>/``)::

    config.json                 the resolved ExperimentConfig and the kit version
    fold_05_sub06/              fold 5 tests the 6th subject in sorted order
        predictions.csv         dataset, subject, clip, true_label, pred_label, prob_<class>...
        fold.json               what the fold computed (wall time, device, losses, n_train)
        loss_curve.png          (papermill path) the notebook's figure
        03_train.ipynb          (papermill path) the executed notebook
        done.json               completion marker, written last and atomically
    predictions.csv, metrics.json, confusion.png   all completed folds together

Folds are complete only when ``done.json`` exists and ``predictions.csv`` parses and covers
exactly the fold subject's samples; starting again runs only the other folds. Data layout
follows cookiecutter-data-science: raw data in ``<root>``, the preprocessing cache in
``<root>/../interim/cache`` (``data/synthetic`` -> ``data/interim/cache``), results under
``papermill_runs/`` and ``reports/``.

Dask: by default a LocalCluster of processes, one thread each, as many as there are folds
and cores (or ``workers``), each fold's torch limited to cores // workers threads (or
``$OMP_NUM_THREADS``, see :func:`fold_threads`); or the
scheduler given as ``scheduler=`` or ``$DASK_SCHEDULER_ADDRESS``. On a GPU machine start each worker with one
GPU and one thread, e.g. ``CUDA_VISIBLE_DEVICES=0 dask worker tcp://host:8786 --nthreads 1
--resources GPU=1``: folds then ask for ``resources={"GPU": 1}`` and run one per GPU.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import io
import json
import logging
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

import mer_utils
from mer_utils.data import PROTOCOLS, Sample, load_samples
from mer_utils.errors import ConfigError, MerError, PreprocessError
from mer_utils.files import atomic_write_bytes, atomic_write_text
from mer_utils.reports import repo_path, synthetic_marker_paths  # repo_path re-exported for notebook 03

REPO_ROOT = Path(mer_utils.__file__).resolve().parent.parent
NOTEBOOK_PATH = REPO_ROOT / "notebooks" / "03_train.ipynb"
CROPNET_METHODS = ("ars", "rrs", "farneback", "tvl1")
METHODS = CROPNET_METHODS + ("lbptop",)
FACE_CROPS = ("dlib", "none")
PREPROCESS_SIZE = 320  # side of the cached images (DESIGN.md 1.2); CropNet resizes to image_size
LBPTOP_FRAMES = 10  # at most this many frames, evenly spaced over the clip window
LBPTOP_SIZE = 96  # side of the grey aligned crops the LBP-TOP features are computed on
LBPTOP_DESCRIPTOR = {"grid": (5, 5), "radius": 1, "n_points": 8}  # 5x5 blocks, 59 u2 bins per plane
CROPNET_FIELDS = ("epochs", "image_size", "batch_size", "lr", "cgpo", "backbone", "pretrained_weights", "n_key",
                  "preprocess_size")
LBPTOP_FIELDS = ("lbptop_frames", "lbptop_size")
# Recorded in config.json but not compared on resume: the cache is keyed by its parameters,
# so where it lives does not change any result.
RESULT_NEUTRAL_FIELDS = ("cache_dir",)
CONFIG_FILE, DONE_FILE, FOLD_FILE, PREDICTIONS_FILE = "config.json", "done.json", "fold.json", "predictions.csv"


# --------------------------------------------------------------------------- configuration


def leave_one_subject_out(samples: Sequence[Sample]) -> list[str]:
    """The LOSO folds: sorted unique ``subject_id`` values; fold i tests subject i."""
    return sorted({s.subject_id for s in samples})


def fold_dir_name(fold: int, subject_id: str) -> str:
    """``fold_05_sub06``; ``casme2/sub01`` becomes ``casme2_sub01``."""
    return f"fold_{fold:02d}_{subject_id.replace('/', '_')}"


def is_synthetic(root: str | Path) -> bool:
    """True when ``root`` or one of its dataset folders was made by ``mer_utils.synth``
    (which leaves a ``.mer_synthetic.json`` marker in each folder it writes)."""
    return bool(synthetic_marker_paths(root))


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything that decides a LOSO experiment's results. None means "the default":
    CropNet hyper-parameters from ``train.TrainConfig``, seed 0, n_key 5, face_crop dlib,
    preprocess_size 320 (the cached images' side; training resizes them to image_size),
    cache_dir ``<root>/../interim/cache``, lbptop_frames 10, lbptop_size 96.

    ``method``: "ars", "rrs", "farneback", "tvl1" train CropNet on that image; "lbptop" is
    the MEGC2019 baseline (LBP-TOP + linear SVM), which ignores the CropNet fields (resolved
    to None) and n_key.
    """

    root: str
    protocol: str
    method: str = "ars"
    megc_list: str | None = None
    epochs: int | None = None
    image_size: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    n_key: int | None = None
    cgpo: bool | None = None
    face_crop: str | None = None
    cache_dir: str | None = None
    backbone: str | None = None
    pretrained_weights: str | None = None
    preprocess_size: int | None = None
    lbptop_frames: int | None = None
    lbptop_size: int | None = None

    def resolved(self) -> "ExperimentConfig":
        """A copy with every default filled in and every path absolute; ConfigError on bad values."""
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown protocol {self.protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; known methods: {', '.join(METHODS)}")
        face_crop = self.face_crop or "dlib"
        if face_crop not in FACE_CROPS:
            raise ConfigError(f"face_crop {face_crop!r} is not one of {FACE_CROPS}")
        if self.megc_list is not None and self.protocol != "megc2019":
            raise ConfigError(f"megc_list applies to protocol megc2019 only, not {self.protocol!r}")
        root = Path(self.root).expanduser().resolve()
        values = dict(
            root=str(root),
            megc_list=str(Path(self.megc_list).expanduser().resolve()) if self.megc_list else None,
            seed=0 if self.seed is None else self.seed,
            face_crop=face_crop,
            cache_dir=str(Path(self.cache_dir).expanduser().resolve() if self.cache_dir
                          else root.parent / "interim" / "cache"),
        )
        if self.method == "lbptop":
            values.update({name: None for name in CROPNET_FIELDS})
            values.update(lbptop_frames=self.lbptop_frames or LBPTOP_FRAMES, lbptop_size=self.lbptop_size or LBPTOP_SIZE)
        else:
            from mer_utils.train import TrainConfig

            train = TrainConfig()
            values.update({name: None for name in LBPTOP_FIELDS})
            for name in ("epochs", "image_size", "batch_size", "lr", "cgpo", "backbone"):
                value = getattr(self, name)
                values[name] = getattr(train, name) if value is None else value
            values["n_key"] = 5 if self.n_key is None else self.n_key
            values["preprocess_size"] = self.preprocess_size or PREPROCESS_SIZE
            if self.pretrained_weights:
                weights = Path(self.pretrained_weights).expanduser().resolve()
                if not weights.is_file():
                    raise ConfigError(f"pretrained_weights: no file at {weights}")
                values["pretrained_weights"] = str(weights)
        config = dataclasses.replace(self, **values)
        for name in ("epochs", "image_size", "batch_size", "n_key", "preprocess_size", "lbptop_frames", "lbptop_size"):
            value = getattr(config, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ExperimentConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown ExperimentConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def train_config(self, max_threads: int | None = None, progress: bool = False):
        """The ``train.TrainConfig`` of a CropNet fold under this (resolved) configuration."""
        from mer_utils.train import TrainConfig

        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, image_size=self.image_size,
            cgpo=self.cgpo, backbone=self.backbone, seed=self.seed,
            pretrained_weights=self.pretrained_weights, classes=PROTOCOLS[self.protocol].classes,
            max_threads=max_threads, progress=progress,
        )


def experiment_settings(config: ExperimentConfig) -> dict:
    """Everything a (resolved) configuration decides, as ``config.json`` records it: the
    ExperimentConfig, and the settings it leaves to their module defaults ("train": the rest
    of train.TrainConfig; "lbptop": the descriptor), so a changed default is noticed too."""
    settings = {"config": config.to_dict()}
    if config.method == "lbptop":
        settings["lbptop"] = dict(LBPTOP_DESCRIPTOR)
    else:
        train = dataclasses.asdict(config.train_config())
        settings["train"] = {k: v for k, v in train.items()
                             if k not in settings["config"] and k not in ("classes", "max_threads", "progress")}
    return json.loads(json.dumps(settings))  # tuples as lists, as they read back


def _flat(settings: dict) -> dict:
    """``{"epochs": 3, "train.alpha": 0.3, ...}``: config fields by name, the others by section."""
    return {(k if section == "config" else f"{section}.{k}"): v
            for section, values in settings.items() for k, v in values.items()}


def _claim_experiment_dir(config: ExperimentConfig, out_dir: Path) -> None:
    """Write ``config.json``, or check that the one there records the same settings."""
    path = out_dir / CONFIG_FILE
    settings = experiment_settings(config)
    record = {**settings, "kit_version": mer_utils.__version__,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            old_flat = _flat({k: old[k] for k in ("config", "train", "lbptop") if k in old})
        except (ValueError, KeyError, AttributeError) as err:
            raise ConfigError(f"{path} is not a config.json of this kit ({err!r}); use another folder") from None
        new_flat = _flat(settings)
        differing = sorted(k for k in set(old_flat) | set(new_flat)
                           if k not in RESULT_NEUTRAL_FIELDS and old_flat.get(k) != new_flat.get(k))
        if differing:
            details = "; ".join(f"{k}: {old_flat.get(k)!r} there, {new_flat.get(k)!r} now" for k in differing)
            raise ConfigError(f"{out_dir} holds an experiment with another configuration "
                              f"(differing: {', '.join(differing)}; {details}); use another folder")
        if old.get("kit_version") != mer_utils.__version__:
            warnings.warn(f"{path} was written by kit version {old.get('kit_version')}, "
                          f"this is {mer_utils.__version__}; resuming anyway", UserWarning, stacklevel=3)
        record["created"] = old.get("created", record["created"])
    elif any(out_dir.glob(f"fold_*/{DONE_FILE}")):
        raise ConfigError(f"{out_dir} holds completed folds but no {CONFIG_FILE}: "
                          "their configuration is unknown; use another folder")
    _write_json_atomic(path, record)


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


# --------------------------------------------------------------------------- LBP-TOP inputs


def lbptop_frame_numbers(sample: Sample, count: int = LBPTOP_FRAMES) -> list[int]:
    """Up to ``count`` frame numbers evenly spaced over the clip window (eq. 1-2), both ends in."""
    from mer_utils.preprocess import clip_window

    start, end = clip_window(sample.onset, sample.apex, sample.offset)
    inside = [n for n in sample.frame_numbers if start <= n <= end]
    if not inside:
        raise PreprocessError(f"clip {sample.key}: no frame on disk in its window {start}..{end}")
    picks = np.linspace(0, len(inside) - 1, min(count, len(inside))).round().astype(int)
    return [inside[i] for i in dict.fromkeys(picks.tolist())]


def lbptop_feature_path(config: ExperimentConfig, sample: Sample) -> Path:
    """Cache file of a sample's LBP-TOP histogram, keyed like the preprocessed images."""
    from mer_utils.preprocess import cache_path

    params = {"frames": lbptop_frame_numbers(sample, config.lbptop_frames), "size": config.lbptop_size,
              "face_crop": config.face_crop, **LBPTOP_DESCRIPTOR}
    return cache_path(config.cache_dir, sample, "lbptop", params).with_suffix(".npy")


def compute_lbptop_feature(config: ExperimentConfig, sample: Sample) -> Path:
    """LBP-TOP histogram (MEGC2019 baseline descriptor) of the sample's aligned grey crops
    over its clip window, saved atomically in the cache."""
    from mer_utils.baselines.lbptop import lbp_top_features, volume_from_crops
    from mer_utils.preprocess import aligned_crops

    path = lbptop_feature_path(config, sample)
    crops = aligned_crops(sample, lbptop_frame_numbers(sample, config.lbptop_frames),
                          size=config.lbptop_size, face_crop=config.face_crop)
    volume = volume_from_crops(crops, size=config.lbptop_size)
    feature = np.asarray(lbp_top_features(volume, **LBPTOP_DESCRIPTOR), dtype=np.float32)
    buffer = io.BytesIO()
    np.save(buffer, feature)
    return atomic_write_bytes(path, buffer.getvalue())


def prepare_lbptop_features(config: ExperimentConfig, samples: Sequence[Sample], workers: int | None = None,
                            progress: bool = True) -> dict[str, Path]:
    """Compute the missing LBP-TOP features in ``workers`` processes; sample.key -> .npy path."""
    from tqdm.auto import tqdm

    paths = {s.key: lbptop_feature_path(config, s) for s in samples}
    todo = [s for s in samples if not paths[s.key].is_file()]
    workers = min(workers or os.cpu_count() or 1, max(1, len(todo)))
    bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc="LBP-TOP features",
               unit="clip", disable=not progress)
    try:
        if workers == 1:
            for sample in todo:
                compute_lbptop_feature(config, sample)
                bar.update(1)
        else:
            with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for future in cf.as_completed([pool.submit(compute_lbptop_feature, config, s) for s in todo]):
                    future.result()
                    bar.update(1)
    finally:
        bar.close()
    return paths


def prepare_inputs(config: ExperimentConfig, samples: Sequence[Sample], workers: int | None = None,
                   progress: bool = True) -> None:
    """Fill the cache once, before the folds: the method's images, or the LBP-TOP features."""
    if config.method == "lbptop":
        prepare_lbptop_features(config, samples, workers, progress)
    else:
        from mer_utils.preprocess import preprocess_samples

        preprocess_samples(samples, method=config.method, cache_dir=config.cache_dir, n_key=config.n_key,
                           face_crop=config.face_crop, size=config.preprocess_size, workers=workers, progress=progress)


# --------------------------------------------------------------------------- one fold


def run_fold(config: ExperimentConfig, fold: int, fold_dir: str | Path, torch_threads: int | None = None,
             progress: bool = False) -> dict:
    """Train on every subject but fold ``fold``'s and predict that subject's samples.

    Writes ``fold_dir/predictions.csv`` and ``fold_dir/fold.json`` and returns the latter's
    record: fold, subject, method, n_train, n_test, wall_time_s, device, pretrained,
    epoch_losses (empty for lbptop), synthetic. Removes a stale ``done.json`` first: the
    caller marks the fold done once everything it writes is in place. Both the notebook
    ``03_train.ipynb`` and the in-process runner call this.
    """
    from mer_utils.evaluate import check_coverage, write_predictions
    from mer_utils.preprocess import load_image, preprocess_samples

    started = time.perf_counter()
    config = config.resolved()
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / DONE_FILE).unlink(missing_ok=True)
    samples = load_samples(config.root, config.protocol, megc_list=config.megc_list)
    subjects = leave_one_subject_out(samples)
    if not 0 <= fold < len(subjects):
        raise ConfigError(f"fold {fold} does not exist: {config.protocol} on {config.root} has "
                          f"{len(subjects)} subjects (folds 0..{len(subjects) - 1})")
    subject = subjects[fold]
    test = [s for s in samples if s.subject_id == subject]
    classes = PROTOCOLS[config.protocol].classes
    if config.method == "lbptop":
        from mer_utils.baselines.lbptop import lbptop_fold

        paths = prepare_lbptop_features(config, samples, workers=1, progress=False)
        features = {key: np.load(path) for key, path in paths.items()}
        predictions = lbptop_fold(features, samples, subject, classes)
        trained = dict(n_train=len(samples) - len(test), device="cpu", pretrained=False, epoch_losses=[])
    else:
        from mer_utils.train import train_fold

        images = preprocess_samples(samples, method=config.method, cache_dir=config.cache_dir, n_key=config.n_key,
                                    face_crop=config.face_crop, size=config.preprocess_size, workers=1, progress=False)
        arrays = {key: load_image(path) for key, path in images.paths.items()}
        result = train_fold(samples, subject, config.train_config(torch_threads, progress), arrays)
        predictions = result.to_frame()
        trained = dict(n_train=result.n_train, device=result.device, pretrained=result.pretrained,
                       epoch_losses=[float(x) for x in result.epoch_losses])
    check_coverage(predictions, test)
    write_predictions(predictions, fold_dir / PREDICTIONS_FILE)
    record = dict(fold=fold, subject=subject, method=config.method, n_test=len(test), **trained,
                  fingerprint=fold_fingerprint(samples, subject),
                  wall_time_s=round(time.perf_counter() - started, 3), synthetic=is_synthetic(config.root))
    _write_json_atomic(fold_dir / FOLD_FILE, record)
    return record


def fold_fingerprint(samples: Sequence[Sample], subject: str) -> dict:
    """What a fold's result depends on in the data: a digest of its test samples (subject
    ``subject``) and one of its training samples (all the others), each over their keys,
    labels and clip windows (onset, apex, offset). Recorded in fold.json and done.json."""
    def digest(part: list) -> str:
        rows = sorted([s.key, s.label, s.onset, s.apex, s.offset] for s in part)
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    return {"test": digest([s for s in samples if s.subject_id == subject]),
            "train": digest([s for s in samples if s.subject_id != subject])}


def fold_staleness(fold_dir: Path, test_samples: Sequence[Sample], fingerprint: dict | None = None) -> str | None:
    """None when the fold is complete, else why not: ``done.json`` missing or unreadable,
    ``predictions.csv`` not covering exactly ``test_samples``, or (given ``fingerprint``, see
    :func:`fold_fingerprint`) the fold trained or tested on other samples than these."""
    from mer_utils.evaluate import check_coverage, read_predictions

    if not (fold_dir / DONE_FILE).is_file():
        return "not finished"
    try:
        done = json.loads((fold_dir / DONE_FILE).read_text())
        check_coverage(read_predictions(fold_dir / PREDICTIONS_FILE), test_samples)
    except (MerError, OSError, ValueError) as err:
        return f"its results are incomplete or unreadable ({err})"
    if fingerprint is not None:
        recorded = done.get("fingerprint") if isinstance(done, dict) else None
        if not isinstance(recorded, dict):
            return f"its {DONE_FILE} records no fingerprint of its samples (an older kit), so they cannot be checked"
        changed = [what for part, what in (("test", "test"), ("train", "training"))
                   if recorded.get(part) != fingerprint[part]]
        if changed:
            return (f"its {' and '.join(changed)} samples changed since it ran "
                    "(sample keys, labels or clip windows in the annotations)")
    return None


def fold_is_complete(fold_dir: Path, test_samples: Sequence[Sample], fingerprint: dict | None = None) -> bool:
    """``done.json`` exists, ``predictions.csv`` parses and covers exactly ``test_samples``
    and, given ``fingerprint``, the fold ran on those samples (:func:`fold_staleness`)."""
    return fold_staleness(fold_dir, test_samples, fingerprint) is None


def plot_epoch_losses(losses: Sequence[float], title: str, path: str | Path | None = None):
    """Training loss per epoch as a matplotlib Figure (saved as PNG when ``path`` is given)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5.5, 3.5))
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean training loss")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def notebook_parameters(config: ExperimentConfig, fold: int, fold_dir: Path, torch_threads: int = 0) -> dict:
    """papermill parameters of ``03_train.ipynb`` for one fold: absolute paths, "" for no
    megc_list or weights file; fields the method ignores (None) keep the notebook's default."""
    params = {k: v for k, v in config.to_dict().items() if k != "root" and v is not None}
    params.update(data_root=config.root, megc_list=config.megc_list or "",
                  pretrained_weights=config.pretrained_weights or "", fold=fold,
                  output_dir=str(Path(fold_dir).resolve()), torch_threads=torch_threads)
    return params


def _fold_task(config_values: dict, fold: int, fold_dir: str, use_papermill: bool, torch_threads: int) -> dict:
    """Run one fold (notebook or in-process), then write ``done.json``; errors come back as text."""
    config = ExperimentConfig.from_dict(config_values)
    fold_dir = Path(fold_dir)
    for stale in (DONE_FILE, FOLD_FILE):
        (fold_dir / stale).unlink(missing_ok=True)
    try:
        if use_papermill:
            import papermill

            fold_dir.mkdir(parents=True, exist_ok=True)
            papermill.execute_notebook(
                str(NOTEBOOK_PATH), str(fold_dir / NOTEBOOK_PATH.name), kernel_name="python3",
                parameters=notebook_parameters(config, fold, fold_dir, torch_threads),
                cwd=str(NOTEBOOK_PATH.parent), progress_bar=False, log_output=False)
            record = json.loads((fold_dir / FOLD_FILE).read_text())
        else:
            record = run_fold(config, fold, fold_dir, torch_threads=torch_threads or None)
    except Exception as err:  # reported by subject; the other folds go on
        name, value = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
        return {"fold": fold, "error": f"{name}: {value}"}
    record.update(notebook=NOTEBOOK_PATH.name if use_papermill else None,
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write_json_atomic(fold_dir / DONE_FILE, record)
    return {"fold": fold, "error": None, "record": record}


# --------------------------------------------------------------------------- the experiment


@dataclass
class ExperimentResult:
    """What ``run_experiment`` did: metrics over every completed fold, failures by subject,
    fold folders by index, wall time and how many folds ran this time (``trained_folds``)."""

    config: ExperimentConfig
    out_dir: Path
    metrics: dict
    failures: dict[str, str] = field(default_factory=dict)
    fold_dirs: dict[int, Path] = field(default_factory=dict)
    wall_time_s: float = 0.0
    trained_folds: int = 0


def fold_threads(workers_per_host: int) -> int:
    """torch CPU threads of one fold: ``$OMP_NUM_THREADS`` of the driver when set (say 1 on a
    busy shared machine, where threads of concurrent processes spin-wait on each other), else
    the host's cores shared among its workers."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, (os.cpu_count() or 1) // max(1, workers_per_host))


def _open_client(scheduler: str | None, workers: int | None, n_folds: int):
    """(client, cluster or None, torch threads per fold); the caller closes both."""
    import dask
    from distributed import Client, LocalCluster

    address = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        client = Client(address)
        hosts = [w.get("host") for w in client.scheduler_info().get("workers", {}).values()]
        return client, None, fold_threads(max((hosts.count(h) for h in set(hosts)), default=1))
    n_workers = workers or max(1, min(os.cpu_count() or 1, n_folds))
    # Not daemonic (a fold may start processes: a notebook kernel, DataLoader workers), and
    # without Dask's default MALLOC_TRIM_THRESHOLD_=65536 for worker processes, which made a CropNet fold about twice as slow here (glibc returns freed
    # memory to the OS after every torch allocation).
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.nanny.pre-spawn-environ": environ}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", memory_limit=0, silence_logs=logging.ERROR)
    return Client(cluster), cluster, fold_threads(n_workers)


def _run_folds(config, pending: dict[int, Path], subjects, scheduler, workers, use_papermill, progress):
    """Submit the pending folds; returns failures {subject: message}."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    client, cluster, threads = _open_client(scheduler, workers, len(pending))
    failures: dict[str, str] = {}
    try:
        gpu = any("GPU" in w.get("resources", {}) for w in client.scheduler_info().get("workers", {}).values())
        futures = {
            client.submit(_fold_task, config.to_dict(), fold, str(fold_dir), use_papermill, threads,
                          pure=False, key=f"loso-fold-{fold:02d}-{time.time_ns()}",
                          resources={"GPU": 1} if gpu else None): fold
            for fold, fold_dir in pending.items()
        }
        for future in tqdm(as_completed(futures), total=len(futures), desc="LOSO folds", unit="fold",
                           disable=not progress):
            fold = futures[future]
            try:
                error = future.result()["error"]
            except Exception as err:  # the worker died (KilledWorker) or the task was lost
                error = f"{type(err).__name__}: {err}"
            if error:
                failures[subjects[fold]] = error
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return failures


def _warn_stale(out_dir: Path, stale: dict[int, str], subjects: Sequence[str], chosen) -> None:
    """Say which finished folds are stale, why, and whether they run again now."""
    for i, reason in stale.items():
        action = "running it again" if i in chosen else "not among the folds asked for: left out of the metrics"
        warnings.warn(f"{out_dir}: fold {i} ({subjects[i]}) is stale: {reason}; {action}", UserWarning, stacklevel=3)


def run_experiment(config: ExperimentConfig, out_dir: str | Path, scheduler: str | None = None,
                   workers: int | None = None, folds: Sequence[int] | None = None,
                   use_papermill: bool | None = None, progress: bool = True) -> ExperimentResult:
    """Run the LOSO folds not yet complete in ``out_dir``, then score every completed fold.

    ``folds``: the fold indices to run (default all); ``use_papermill``: run each fold as the
    notebook ``03_train.ipynb`` (default: when the notebook exists) or in-process. Metrics
    follow MEGC2019: all completed folds' predictions concatenated, then UF1/UAR/accuracy;
    when folds are missing or failed, the metrics cover only the completed ones and say so
    (``metrics["folds"]``, a note, and a warning). Every fold failing raises MerError.
    """
    import pandas as pd

    from mer_utils.evaluate import (check_coverage, compute_metrics, plot_confusion_matrix, read_predictions,
                                    write_metrics, write_predictions)

    started = time.perf_counter()
    config = config.resolved()
    out_dir = Path(out_dir).resolve()
    if use_papermill is None:
        use_papermill = NOTEBOOK_PATH.is_file()
    elif use_papermill and not NOTEBOOK_PATH.is_file():
        raise ConfigError(f"use_papermill: the notebook {NOTEBOOK_PATH} does not exist (installed without the repo?)")
    samples = load_samples(config.root, config.protocol, megc_list=config.megc_list)
    subjects = leave_one_subject_out(samples)
    chosen = range(len(subjects)) if folds is None else sorted(set(folds))
    bad = [f for f in chosen if not 0 <= f < len(subjects)]
    if bad:
        raise ConfigError(f"fold(s) {bad} do not exist: {len(subjects)} subjects, folds 0..{len(subjects) - 1}")
    _claim_experiment_dir(config, out_dir)  # only once the inputs load: a failed start leaves no config.json
    fold_dirs = {i: out_dir / fold_dir_name(i, s) for i, s in enumerate(subjects)}
    tests = {i: [x for x in samples if x.subject_id == s] for i, s in enumerate(subjects)}
    prints = {i: fold_fingerprint(samples, s) for i, s in enumerate(subjects)}
    reasons = {i: fold_staleness(fold_dirs[i], tests[i], prints[i]) for i in range(len(subjects))}
    _warn_stale(out_dir, {i: r for i, r in reasons.items() if r and (fold_dirs[i] / DONE_FILE).is_file()},
                subjects, chosen)
    pending = {i: fold_dirs[i] for i in chosen if reasons[i]}
    failures = {}
    if pending:
        prepare_inputs(config, samples, workers, progress)
        failures = _run_folds(config, pending, subjects, scheduler, workers, use_papermill, progress)

    completed = [i for i in range(len(subjects)) if fold_is_complete(fold_dirs[i], tests[i], prints[i])]
    if not completed:
        shown = "; ".join(f"{s}: {m}" for s, m in list(failures.items())[:3])
        raise MerError(f"{out_dir}: no fold is complete, nothing to score" + (f" (failures: {shown})" if shown else ""))
    table = pd.concat([read_predictions(fold_dirs[i] / PREDICTIONS_FILE) for i in completed], ignore_index=True)
    check_coverage(table, [x for i in completed for x in tests[i]])
    classes = PROTOCOLS[config.protocol].classes
    metrics = compute_metrics(table, classes)
    missing = [subjects[i] for i in range(len(subjects)) if i not in completed]
    metrics["folds"] = {"completed": len(completed), "total": len(subjects), "missing_subjects": missing}
    if missing:
        note = f"partial: {len(completed)} of {len(subjects)} folds complete; missing subjects: {', '.join(missing)}"
        metrics["notes"].append(note)
        warnings.warn(f"{out_dir}: metrics are {note}", UserWarning, stacklevel=2)
    write_predictions(table, out_dir / PREDICTIONS_FILE)
    write_metrics(metrics, out_dir / "metrics.json")
    synthetic = ", synthetic data" if is_synthetic(config.root) else ""
    plot_confusion_matrix(metrics["confusion"], classes, path=out_dir / "confusion.png",
                          title=f"{config.method} on {config.protocol}, {len(table)} samples{synthetic}")
    return ExperimentResult(config, out_dir, metrics, failures, fold_dirs,
                            time.perf_counter() - started, len(pending))
