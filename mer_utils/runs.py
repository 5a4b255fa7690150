"""Leave-one-subject-out experiments (paper 4.2): one fold per subject, fanned out on Dask,
resumable.

Layout of an experiment folder (``out_dir``, e.g. ``papermill_runs/<experiment>/``)::

    config.json                 the resolved ExperimentConfig and the kit version
    fold_05_sub06/              fold 5 tests the 6th subject in sorted order
        predictions.csv         dataset, subject, clip, true_label, pred_label, prob_<class>...
        fold.json               what the fold computed (wall time and where it went, device,
                                precision, memory format, peak GPU memory, losses, n_train)
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
and cores (or ``workers``; one on a machine with CUDA, see :func:`default_local_workers`),
each fold's torch limited to cores // workers threads (or
``$OMP_NUM_THREADS``, see :func:`fold_threads`); or the
scheduler given as ``scheduler=`` or ``$DASK_SCHEDULER_ADDRESS``. On a GPU machine start each worker with one
GPU and one thread, e.g. ``CUDA_VISIBLE_DEVICES=0 DASK_DISTRIBUTED__WORKER__DAEMON=False dask worker
tcp://host:8786 --nthreads 1 --resources GPU=1`` (not daemonic, so that in-process folds may
start their loader processes): CropNet folds then ask for ``resources={"GPU": 1}`` and run
one per GPU; LBP-TOP's folds ask for none.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

import mer_utils
from mer_utils.config import RESULT_NEUTRAL_FIELDS, ExperimentConfig, experiment_key, experiment_settings
from mer_utils.data import PROTOCOLS, Sample, load_samples
from mer_utils.errors import ConfigError, DatasetError, DataWarning, MerError, check_int
from mer_utils.files import FOLD_FILE, atomic_write_text, file_digest, fold_records, read_fold_record
from mer_utils.paths import EXPERIMENTS_DIR, LENT_SCHEDULER_ENV, PACKAGE_DIR, PROGRESS_ENV, repo_path, repo_relative
from mer_utils.provenance import is_synthetic, kit_identity

NOTEBOOK_PATH = PACKAGE_DIR.parent / "notebooks" / "03_train.ipynb"  # one fold as a notebook (repository checkouts)
CONFIG_FILE, DONE_FILE, PREDICTIONS_FILE = "config.json", "done.json", "predictions.csv"
LOSSES_FILE = "losses.csv"  # mean training loss per epoch over the folds
PROGRESS_FILE = "progress.json"  # a CropNet fold's epochs so far, while it trains (removed when it ends)
PROGRESS_POLL_S = 2.0  # how often the runner reads the running folds' progress (a finished fold: at once)
PROGRESS_LINE_S = 60.0  # at most one "training: fold N epoch k/E" line this often (PROGRESS_ENV)


# --------------------------------------------------------------------------- configuration


def leave_one_subject_out(samples: Sequence[Sample]) -> list[str]:
    """The LOSO folds: sorted unique ``subject_id`` values; fold i tests subject i."""
    return sorted({s.subject_id for s in samples})


def fold_subject(subjects: Sequence[str], fold: int, config: ExperimentConfig) -> str:
    """The subject fold ``fold`` tests (``subjects`` in LOSO order); ConfigError naming the
    folds that exist when it is not one of them."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < len(subjects):
        raise ConfigError(f"fold {fold} does not exist: {config.protocol} on {config.root} has "
                          f"{len(subjects)} subjects (folds 0..{len(subjects) - 1})")
    return subjects[fold]


def fold_dir_name(fold: int, subject_id: str) -> str:
    """``fold_05_sub06``; ``casme2/sub01`` becomes ``casme2_sub01``."""
    return f"fold_{fold:02d}_{subject_id.replace('/', '_')}"


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
            if not isinstance(old, dict) or not isinstance(old.get("config"), dict):
                raise ValueError("no experiment configuration in it")
            old_flat = _flat({k: old[k] for k in ("config", "train", "lbptop") if k in old})
        except (ValueError, KeyError, AttributeError) as err:
            raise ConfigError(f"{path} is not a config.json of this kit ({err}); use another folder") from None
        new_flat = _flat(settings)
        differing = sorted(k for k in set(old_flat) | set(new_flat)
                           if k not in RESULT_NEUTRAL_FIELDS and old_flat.get(k) != new_flat.get(k))
        if differing:
            first = sorted(differing, key=lambda k: k not in ("method", "protocol", "root"))  # what says most
            details = "; ".join(f"{k}: {old_flat.get(k)!r} there, {new_flat.get(k)!r} now"
                                for k in first[:DIFFERING_SHOWN])
            rest = first[DIFFERING_SHOWN:]
            more = f"; and {len(rest)} more: {', '.join(rest)}" if rest else ""
            raise ConfigError(f"{out_dir} holds an experiment with another configuration "
                              f"(differing: {details}{more}); use another folder")
        if old.get("kit_version") != mer_utils.__version__:
            warnings.warn(f"{path} was written by kit version {old.get('kit_version')}, "
                          f"this is {mer_utils.__version__}; resuming anyway", UserWarning, stacklevel=3)
        record["created"] = old.get("created", record["created"])
    elif any(out_dir.glob(f"fold_*/{DONE_FILE}")):
        raise ConfigError(f"{out_dir} holds completed folds but no {CONFIG_FILE}: "
                          "their configuration is unknown; use another folder")
    elif out_dir.is_dir() and any(not (p.is_dir() and p.name.startswith("fold_")) and p.name != LOCK_FILE
                                  for p in out_dir.iterdir()):
        # not an experiment folder: the experiment's files would replace the user's
        raise ConfigError(f"{out_dir} holds files but no experiment of this kit ({CONFIG_FILE}): "
                          "use a new or empty folder")
    _write_json_atomic(path, record)


DIFFERING_SHOWN = 4  # settings whose two values a refusal of another configuration shows (then only names)
LOCK_FILE = ".mer-lock"  # held (flock) by the one process running an experiment folder


def _lock_experiment_dir(out_dir: Path):
    """Hold ``out_dir``'s lock file for this run (an open file; closing it releases the lock,
    and so does the process's end, killed or not). A second run of the same folder at the
    same time (another ``mer loso``, notebook or script) would train every fold twice and
    could score the other's half-written folds: it is refused in one line instead. Where
    ``fcntl`` does not exist (Windows) nothing is locked.

    The lock file holds this run's token while it runs (:func:`_end_run` empties it): a fold
    still running on a Dask cluster after its run ended (Ctrl-C, a lost scheduler) sees the
    token change at its next epoch and stops without writing (:func:`run_fold`)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"experiment folder {out_dir} is a file, not a folder: use another folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(out_dir / LOCK_FILE, "a")
    except OSError as err:
        raise ConfigError(f"cannot write in experiment folder {out_dir} ({err.strerror}): use a folder you can write to") from None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"{out_dir} is in use by another run of this experiment (another mer loso, notebook or "
                          "script): wait for it to finish; its finished folds are then reused") from None
    _write_token(handle, f"{os.getpid()}-{time.time_ns()}")
    return handle


def _write_token(handle, token: str) -> None:
    with contextlib.suppress(OSError):  # a courtesy to folds left running; never stops a run
        handle.truncate(0)
        handle.write(token)
        handle.flush()


def _end_run(handle) -> None:
    """Empty the run's token and release the folder's lock."""
    _write_token(handle, "")
    handle.close()


def _run_token(experiment_dir: Path) -> str | None:
    """The token of the run that holds ``experiment_dir`` now ("" once it ended), or None
    where the folder has no lock file (a fold run outside the runner)."""
    try:
        return (experiment_dir / LOCK_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


class RunEnded(MerError):
    """The run that started a fold ended while the fold still ran (on a Dask cluster)."""


def _check_run(fold_dir: Path, token: str | None) -> None:
    """RunEnded when the run that started this fold (``token``, read when it started) has
    ended or another run holds its folder now: the fold's results would belong to no run."""
    if token and _run_token(fold_dir.parent) != token:
        raise RunEnded(f"{fold_dir}: the run that started this fold has ended (interrupted, or its Dask scheduler "
                       "was lost): the fold stops without writing results; run the experiment again")


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


# --------------------------------------------------------------------------- LBP-TOP inputs


def prepare_inputs(config: ExperimentConfig, samples: Sequence[Sample], workers: int | None = None,
                   progress: bool = True) -> None:
    """Fill the cache once, before the folds: the method's images, or the LBP-TOP features."""
    if config.method == "lbptop":
        from mer_utils.baselines import lbptop

        lbptop.prepare_features(samples, config.cache_dir, config.lbptop_frames, config.lbptop_size,
                                config.face_crop, workers, progress)
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

    if torch_threads is not None:
        check_int("torch_threads", torch_threads, note="or 0/None: torch's default")
    started = time.perf_counter()
    config = config.resolved()
    fold_dir = Path(fold_dir)
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / DONE_FILE).unlink(missing_ok=True)
    progress_file = fold_dir / PROGRESS_FILE
    progress_file.unlink(missing_ok=True)
    token = _run_token(fold_dir.parent)  # the run that started this fold, if the runner did
    samples = load_samples(config.root, config.protocol, megc_list=config.megc_list)
    subject = fold_subject(leave_one_subject_out(samples), fold, config)
    test = [s for s in samples if s.subject_id == subject]
    classes = PROTOCOLS[config.protocol].classes
    if config.method == "lbptop":
        from mer_utils.baselines import lbptop

        paths = lbptop.prepare_features(samples, config.cache_dir, config.lbptop_frames, config.lbptop_size,
                                        config.face_crop, workers=1, progress=False)
        features = {key: np.load(path) for key, path in paths.items()}
        predictions = lbptop.lbptop_fold(features, samples, subject, classes)
        trained = dict(n_train=len(samples) - len(test), device="cpu", pretrained=False, weights=None, epoch_losses=[])
    else:
        from mer_utils.train import train_fold

        images = preprocess_samples(samples, method=config.method, cache_dir=config.cache_dir, n_key=config.n_key,
                                    face_crop=config.face_crop, size=config.preprocess_size, workers=1, progress=False)
        arrays = {key: load_image(path) for key, path in images.paths.items()}
        training = time.perf_counter()
        total = config.epochs * config.ensemble

        def on_epoch(done: int, loss: float) -> None:  # read by the runner's bar (_epochs_done)
            _check_run(fold_dir, token)
            with contextlib.suppress(OSError):  # progress is a courtesy: it never stops a fold
                _write_json_atomic(progress_file, {"epochs_done": done, "epochs": total, "loss": round(loss, 6)})

        try:
            result = train_fold(samples, subject, config.train_config(torch_threads, progress), arrays, on_epoch)
        finally:
            progress_file.unlink(missing_ok=True)
        predictions = result.to_frame()
        trained = dict(n_train=result.n_train, device=result.device, pretrained=result.pretrained,
                       weights=config.pretrained_weights, epoch_losses=[float(x) for x in result.epoch_losses],
                       precision=result.config.get("amp_dtype", "float32"), processor=result.processor,
                       loader_workers=result.config.get("num_workers"), channels_last=result.channels_last,
                       gpu_peak_memory_mib=result.gpu_peak_memory_mib,
                       seconds={"load": round(training - started, 3), **result.seconds})
        if result.member_losses:  # an ensemble: epoch_losses are the members' means
            trained["member_epoch_losses"] = result.member_losses
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




def inputs_digest(samples: Sequence[Sample], config: ExperimentConfig) -> str:
    """A digest of the content of every frame file the experiment's method reads (for CropNet
    the window's start and key frames, as the preprocessing cache keys them; for LBP-TOP its
    sampled frames): a frame replaced after a fold ran makes the fold stale, though the
    annotations did not change. A file is read once per process while its size and mtime hold."""
    from mer_utils.preprocess import window_frames

    config = config.resolved()
    rows = []
    for sample in sorted(samples, key=lambda x: x.key):
        if config.method == "lbptop":
            from mer_utils.baselines.lbptop import frame_numbers

            numbers = frame_numbers(sample, config.lbptop_frames)
        else:
            numbers = window_frames(sample, config.n_key)
        rows.append([sample.key, [_file_digest(sample.frame_path(n)) for n in numbers]])
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    try:
        return file_digest(path)
    except OSError as err:
        raise DatasetError(f"cannot read frame {path}: {err.strerror}") from None


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
        if (fold_dir / FOLD_FILE).exists():
            read_fold_record(fold_dir)
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
        if "inputs" in recorded and "inputs" in fingerprint and recorded["inputs"] != fingerprint["inputs"]:
            return "the frames it read changed since it ran (the content of a window's start or key frame files)"
    return None


def fold_is_complete(fold_dir: Path, test_samples: Sequence[Sample], fingerprint: dict | None = None) -> bool:
    """``done.json`` exists, ``predictions.csv`` parses and covers exactly ``test_samples``
    and, given ``fingerprint``, the fold ran on those samples (:func:`fold_staleness`)."""
    return fold_staleness(fold_dir, test_samples, fingerprint) is None


def fold_notebook_parameters(config: ExperimentConfig, fold: int, fold_dir: Path, torch_threads: int = 0) -> dict:
    """papermill parameters of ``03_train.ipynb`` for one fold: absolute paths, "" for no
    megc_list or weights file; fields the method ignores (None) keep the notebook's default."""
    params = {k: v for k, v in config.to_dict().items() if k != "root" and v is not None}
    params.update(data_root=config.root, megc_list=config.megc_list or "",
                  pretrained_weights=config.pretrained_weights or "", fold=fold,
                  output_dir=str(Path(fold_dir).resolve()), torch_threads=torch_threads)
    return params


# The way out of both kit-mismatch refusals (check_workers_kit, before any fold; _fold_task, a worker that joined later)
KIT_MISMATCH_FIX = "install this kit on every worker (the same commit, `make install`) and restart them"


def _fold_task(config_values: dict, fold: int, fold_dir: str, use_papermill: bool, host_workers: int,
               inputs: str | None = None, kit: str | None = None) -> dict:
    """Run one fold (notebook or in-process), then write ``done.json``; errors come back as text.
    Its torch threads are :func:`fold_threads` of ``host_workers`` (the workers sharing a
    machine), counted here, on the worker's machine, with its cores and ``$OMP_NUM_THREADS``.
    The fold loads the experiment's samples again: the DataWarnings that load gives, the
    experiment has already shown once (``run_experiment``), so a worker does not repeat them.
    ``kit``: the sending run's ``kit_identity()``; a worker with other code refuses the fold."""
    if kit is not None and kit != kit_identity():
        return {"fold": fold, "error": f"this Dask worker runs mer-residual {kit_identity()}, but the run is "
                                       f"mer-residual {kit}: {KIT_MISMATCH_FIX}"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return _run_fold_task(config_values, fold, fold_dir, use_papermill, fold_threads(host_workers), inputs)


def _run_fold_task(config_values: dict, fold: int, fold_dir: str, use_papermill: bool, torch_threads: int,
                   inputs: str | None = None) -> dict:
    config = ExperimentConfig.from_dict(config_values)
    fold_dir = Path(fold_dir)
    token = _run_token(fold_dir.parent)
    for stale in (DONE_FILE, FOLD_FILE, PROGRESS_FILE):
        (fold_dir / stale).unlink(missing_ok=True)
    try:
        if use_papermill:
            from mer_utils.notebook import execute_notebook

            fold_dir.mkdir(parents=True, exist_ok=True)
            execute_notebook(NOTEBOOK_PATH, fold_dir / NOTEBOOK_PATH.name,
                             fold_notebook_parameters(config, fold, fold_dir, torch_threads), log_output=False)
            record = json.loads((fold_dir / FOLD_FILE).read_text())
        else:
            record = run_fold(config, fold, fold_dir, torch_threads=torch_threads or None)
    except Exception as err:  # reported by subject; the other folds go on
        name, value = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
        return {"fold": fold, "error": f"{name}: {value}"}
    record.update(notebook=NOTEBOOK_PATH.name if use_papermill else None,
                  finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    if inputs is not None and isinstance(record.get("fingerprint"), dict):  # the frames' content, from the runner
        record["fingerprint"] = {**record["fingerprint"], "inputs": inputs}
    try:
        _check_run(fold_dir, token)  # a fold whose run has ended is not marked done
        _write_json_atomic(fold_dir / DONE_FILE, record)
    except RunEnded as err:
        return {"fold": fold, "error": f"RunEnded: {err}"}
    except OSError as err:  # a full disk, say: this fold failed, by name, like any other failure
        return {"fold": fold, "error": f"cannot write {fold_dir / DONE_FILE} ({err.strerror or err})"}
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
    epoch_losses: list[float] = field(default_factory=list)  # mean training loss per epoch over folds

    def summary_line(self) -> str:
        """"6/6 folds, 2 trained now, UF1 0.6993, UAR 0.6767, 118 s": what a run did, as
        notebooks and ``mer loso`` end it."""
        done = self.metrics.get("folds", {})
        return (f"{done.get('completed', '?')}/{done.get('total', '?')} folds, {self.trained_folds} trained now, "
                f"UF1 {self.metrics['uf1']:.4f}, UAR {self.metrics['uar']:.4f}, {self.wall_time_s:.0f} s")


def fold_threads(workers_per_host: int) -> int:
    """torch CPU threads of one fold: ``$OMP_NUM_THREADS`` of the driver when set (say 1 on a
    busy shared machine, where threads of concurrent processes spin-wait on each other), else
    the host's cores shared among its workers."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, (os.cpu_count() or 1) // max(1, workers_per_host))


def default_local_workers(n_folds: int) -> int:
    """Folds a local cluster runs at a time when ``workers`` is not given: one on a machine
    with CUDA (a fold needs about 4 GiB at 320 px; two sharing one H200 with 16 cores ran
    1.4 and 1.19 times the folds per hour in two sessions, docs/gpu.md, so ``workers=2`` is
    the caller's choice where memory and cores allow), else as many as there are folds and
    cores."""
    import torch

    if torch.cuda.is_available():
        return 1
    return max(1, min(os.cpu_count() or 1, n_folds))


_KEPT_CLUSTERS: dict[int, tuple] = {}  # workers -> (cluster, client): one local cluster per process, reused


def lend_local_cluster(workers: int) -> str:
    """The scheduler address of this process's local cluster of ``workers`` processes, started
    as the runner starts its own and kept until :func:`close_local_clusters` or the process's
    end. ``mer reproduce`` lends it to the notebooks it runs (their ``scheduler`` parameter), so
    their folds run in the same worker processes: no new cluster and no new torch import in
    each notebook. A fold's threads are counted as on the notebook's own cluster (the workers
    sharing a machine), so it computes the same numbers."""
    client, _, _ = _open_client(None, check_int("workers", workers), workers)
    return client.scheduler.address


def close_local_clusters() -> None:
    """Close the local clusters this process keeps (``_open_client``, ``lend_local_cluster``)."""
    for cluster, client in _KEPT_CLUSTERS.values():
        try:
            client.close()
            cluster.close()
        except Exception:  # shutting down anyway
            pass
    _KEPT_CLUSTERS.clear()


@contextlib.contextmanager
def _workers_ignore_interrupts():
    """Start the local cluster's worker processes with Ctrl-C (SIGINT) ignored, a disposition
    they inherit: Ctrl-C in a terminal reaches every process of its group, and each worker then
    printed a page of asyncio tracebacks. This process alone handles it: it cancels the folds
    and closes the cluster, which ends the workers. Ctrl-C in the second or two the workers
    take to start is ignored as well (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def _open_client(scheduler: str | None, workers: int | None, n_folds: int):
    """(client, owned, workers per machine); the caller closes the client when ``owned``.

    A local cluster is started once per process and number of workers and kept for the next
    experiments (a notebook runs many: no new worker processes, no new torch import each time);
    it closes when the process ends."""
    import atexit

    import dask
    from distributed import Client, LocalCluster

    if scheduler:  # run_experiment has already taken $DASK_SCHEDULER_ADDRESS into account
        try:
            client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except Exception as err:  # it answered check_scheduler, then went away during the preprocessing
            raise ConfigError(f"Dask scheduler {scheduler} no longer answers ({' '.join(str(err).split())})") from None
        hosts = [w.get("host") for w in client.scheduler_info().get("workers", {}).values()]
        return client, True, max((hosts.count(h) for h in set(hosts)), default=1)
    n_workers = workers or default_local_workers(n_folds)
    kept = _KEPT_CLUSTERS.get(n_workers)
    if kept is not None and kept[1].status == "running" and len(kept[1].scheduler_info().get("workers", {})):
        return kept[1], False, n_workers
    # Not daemonic (a fold may start processes: a notebook kernel, DataLoader workers), and
    # without Dask's default MALLOC_TRIM_THRESHOLD_=65536 for worker processes, which made a CropNet fold about
    # twice as slow here (glibc returns freed memory to the OS after every torch allocation).
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.nanny.pre-spawn-environ": environ}), _workers_ignore_interrupts():
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0", memory_limit=0, silence_logs=logging.ERROR)
    client = Client(cluster)
    if not _KEPT_CLUSTERS:
        atexit.register(close_local_clusters)
    _KEPT_CLUSTERS[n_workers] = (cluster, client)
    return client, False, n_workers


SCHEDULER_TIMEOUT_S = 10  # how long a given Dask scheduler gets to answer before any work


def check_scheduler(address: str, from_environment: bool = False) -> None:
    """ConfigError in one line when the Dask scheduler at ``address`` does not answer within
    SCHEDULER_TIMEOUT_S, before an experiment claims a folder or preprocesses anything;
    ``from_environment``: the address came from ``$DASK_SCHEDULER_ADDRESS``, which it names."""
    from distributed import Client

    try:
        client = Client(address, timeout=SCHEDULER_TIMEOUT_S)
    except Exception as err:  # OSError, TimeoutError, ValueError for a malformed address
        reason = " ".join(str(err).split()) or type(err).__name__
        if from_environment and os.environ.get(LENT_SCHEDULER_ENV) == address:
            raise ConfigError(f"Dask scheduler {address} (the local cluster `mer reproduce` started for its notebooks) "
                              f"cannot be reached ({reason}): it stopped during the run; run the same `mer reproduce` "
                              "again (finished folds are kept)") from None
        source, way_out = ((" (from $DASK_SCHEDULER_ADDRESS)", "unset DASK_SCHEDULER_ADDRESS") if from_environment
                           else ("", "leave the scheduler out"))
        raise ConfigError(f"Dask scheduler {address}{source} cannot be reached ({reason}): start it there, or "
                          f"{way_out} for a local cluster") from None
    try:
        check_workers_kit(client.run(kit_identity, on_error="return"), address)
    finally:
        client.close()


def check_workers_kit(identities: dict, address: str) -> None:
    """ConfigError naming the first Dask worker (of ``identities``: worker -> its ``kit_identity()``,
    or the error it raised) that runs other code than this process: another version or source
    of the kit, or none (it cannot import ``mer_utils``). Workers that join later are checked
    by each fold (``_fold_task``)."""
    mine = kit_identity()
    others = {worker: found for worker, found in identities.items() if found != mine}
    if not others:
        return
    worker, found = sorted(others.items())[0]
    more = f" (and {len(others) - 1} more of its {len(identities)} workers)" if len(others) > 1 else ""
    runs = (f"runs mer-residual {found}" if isinstance(found, str)
            else f"cannot run this kit ({type(found).__name__}: {' '.join(str(found).split())})")
    raise ConfigError(f"Dask worker {worker} of scheduler {address} {runs}{more}, but this run is mer-residual "
                      f"{mine}: {KIT_MISMATCH_FIX}")


def _report_progress(line: str) -> None:
    """Append ``line`` to the file ``$MER_PROGRESS_FILE`` names, if any (``PROGRESS_ENV``)."""
    path = os.environ.get(PROGRESS_ENV)
    if path:
        try:
            with open(path, "a", encoding="utf-8") as file:
                file.write(line + "\n")
        except OSError:  # progress is a courtesy: it never stops a run
            pass


def _epochs_done(fold_dir: Path, since: float = 0.0) -> int:
    """The epochs a running CropNet fold has trained so far (its ``PROGRESS_FILE``; 0 before
    its first epoch, for a file written before ``since`` (a time.time(): a fold of an earlier
    run), or where the fold runs on a machine that does not share this folder)."""
    path = fold_dir / PROGRESS_FILE
    try:
        if path.stat().st_mtime < since:
            return 0
        done = json.loads(path.read_text(encoding="utf-8")).get("epochs_done", 0)
    except (OSError, ValueError, AttributeError):  # not there yet, or being replaced
        return 0
    return done if isinstance(done, int) and not isinstance(done, bool) else 0


NO_WORKER_WAIT_S = 30.0  # folds waiting this long with no worker to run them: say so, once
IDLE_CHECK_S = 5.0  # how often the runner asks a remote scheduler whether any worker can run its folds


def _idle_cluster(client, gpu: bool) -> str | None:
    """Why no worker of ``client``'s cluster can run a fold now, or None."""
    try:
        workers = client.scheduler_info().get("workers", {}).values()
    except Exception:  # the scheduler itself went away: the futures say so
        return None
    if not workers:
        return "no Dask worker is connected to its scheduler"
    if gpu and not any("GPU" in w.get("resources", {}) for w in workers):
        return "no connected Dask worker offers the GPU resource its folds ask for"
    return None


def _fold_error(err: BaseException) -> str:
    """A lost fold's error, in words where Dask's own are cryptic."""
    text = f"{type(err).__name__}: {err}"
    if "scheduler-connection-lost" in text:
        return ("the Dask scheduler went away (its workers may still be running this fold, which stops at its next "
                "epoch); " + text)
    return text


def _run_folds(config, pending: dict[int, Path], subjects, scheduler, workers, use_papermill, progress,
               label: str = "LOSO", inputs: str | None = None):
    """Submit the pending folds; returns failures {subject: message}. ``label`` names the
    experiment in the progress lines (``PROGRESS_ENV``). The bar counts CropNet epochs over all
    pending folds (read from each running fold's ``PROGRESS_FILE``), so a long fold shows its
    progress and an estimate of the time left; LBP-TOP's counts folds. Where progress lines are
    asked for, a CropNet experiment also writes the running folds' epochs after ``PROGRESS_LINE_S``
    without a line, while they change (a fold at the paper's settings on a CPU takes long). Folds
    that wait ``NO_WORKER_WAIT_S`` with no worker to run them (a scheduler without workers, or
    without a GPU worker for folds that ask for one) are named in one warning."""
    from distributed import wait
    from tqdm.auto import tqdm

    client, owned, host_workers = _open_client(scheduler, workers, len(pending))
    failures: dict[str, str] = {}
    per_fold = 1 if config.method == "lbptop" else config.epochs * config.ensemble
    quiet = logging.getLogger("distributed.client")  # a lost scheduler: the kit's one line, not its tracebacks
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    futures: dict = {}
    finished: set[int] = set()
    try:
        cluster = client.scheduler_info().get("workers", {}).values()
        gpu = config.method != "lbptop" and any("GPU" in w.get("resources", {}) for w in cluster)
        if gpu and not all("GPU" in w.get("resources", {}) for w in cluster):
            warnings.warn(f"{label}: the Dask cluster mixes workers with and without a GPU resource: the CropNet folds "
                          "ask for a GPU, so only the workers that offer one run them", UserWarning, stacklevel=3)
        for fold_dir in pending.values():
            (fold_dir / PROGRESS_FILE).unlink(missing_ok=True)  # a killed run's: not this run's epochs
        submitted = time.time()
        futures = {
            client.submit(_fold_task, config.to_dict(), fold, str(fold_dir), use_papermill, host_workers, inputs,
                          kit_identity(), pure=False, key=f"loso-fold-{fold:02d}-{time.time_ns()}",
                          resources={"GPU": 1} if gpu else None): fold
            for fold, fold_dir in pending.items()
        }
        lines = per_fold > 1 and bool(os.environ.get(PROGRESS_ENV))
        last_line, last_epochs = time.monotonic(), {}
        idle_since, idle_checked = None, time.monotonic()
        watch_idle = bool(scheduler)  # a local cluster has its workers
        folds_text = f"{len(futures)} fold{'' if len(futures) == 1 else 's'}"
        bar = tqdm(total=len(futures) * per_fold, desc=f"LOSO, {folds_text}",
                   unit="fold" if per_fold == 1 else "epoch", disable=not progress)
        watch = progress or lines or watch_idle  # else: nothing to do until a fold finishes
        with bar:
            while True:
                waiting = [f for f, fold in futures.items() if fold not in finished]
                try:  # a fold finishing ends the wait at once
                    wait(waiting, timeout=PROGRESS_POLL_S if watch else None, return_when="FIRST_COMPLETED")
                except TimeoutError:  # the poll: progress, training lines, idle workers
                    pass
                except Exception:  # a cancelled fold (a lost scheduler), handled below as failed
                    if not any(f.done() for f in waiting):
                        time.sleep(PROGRESS_POLL_S)
                for future in [f for f in waiting if f.done()]:
                    fold = futures[future]
                    try:
                        error = future.result()["error"]
                    except Exception as err:  # the worker died (KilledWorker), the task or the scheduler was lost
                        error = _fold_error(err)
                    if error:
                        failures[subjects[fold]] = error
                    finished.add(fold)
                    last_line = time.monotonic()  # a training line only after a minute without any line
                    _report_progress(f"{label}: {len(finished)} of {len(futures)} folds done "
                                     f"(fold {fold}, {subjects[fold]}{': FAILED' if error else ''})")
                shown = per_fold > 1 and (progress or lines)  # progress files are read for a bar or lines only
                epochs = {} if not shown else {fold: min(_epochs_done(pending[fold], submitted), per_fold)
                                               for fold in pending if fold not in finished}
                if progress:
                    bar.update(max(0, len(finished) * per_fold + sum(epochs.values()) - bar.n))
                    failed = f", {len(failures)} failed" if failures else ""
                    bar.set_postfix_str(f"{len(finished)}/{len(futures)} folds done{failed}", refresh=False)
                if len(finished) == len(futures):
                    break
                training = {fold: done for fold, done in epochs.items() if done}
                if lines and training != last_epochs and time.monotonic() - last_line >= PROGRESS_LINE_S:
                    last_line, last_epochs = time.monotonic(), training
                    _report_progress(f"{label}: {len(finished)} of {len(futures)} folds done; training " + ", ".join(
                        f"fold {fold} epoch {done}/{per_fold}" for fold, done in sorted(training.items())))
                if watch_idle and time.monotonic() - idle_checked >= IDLE_CHECK_S:
                    idle_checked = time.monotonic()
                    reason = _idle_cluster(client, gpu)
                    idle_since = (idle_since or idle_checked) if reason else None
                if watch_idle and idle_since is not None and time.monotonic() - idle_since >= NO_WORKER_WAIT_S:
                    watch_idle = False  # said once
                    message = (f"{label}: {len(futures) - len(finished)} fold(s) waiting {NO_WORKER_WAIT_S:.0f} s: "
                               f"{reason} ({scheduler or 'the local cluster'}); start one there, or Ctrl-C: "
                               "finished folds are kept")
                    warnings.warn(message, UserWarning, stacklevel=3)
                    _report_progress(message)
    finally:
        if len(finished) < len(futures):  # interrupted: the queued folds never start (running ones stop at
            with contextlib.suppress(Exception):  # their next epoch, their run's token gone: _check_run)
                client.cancel([f for f, fold in futures.items() if fold not in finished])
        quiet.setLevel(level)
        if owned:
            client.close()
    return failures


def _warn_stale(out_dir: Path, stale: dict[int, str], subjects: Sequence[str], chosen) -> None:
    """Say which finished folds are stale, why, and whether they run again now."""
    for i, reason in stale.items():
        action = "running it again" if i in chosen else "not among the folds asked for: left out of the metrics"
        warnings.warn(f"{repo_relative(out_dir)}: fold {i} ({subjects[i]}) is stale: {reason}; {action}", UserWarning,
                      stacklevel=3)


def run_experiment(config: ExperimentConfig, out_dir: str | Path, scheduler: str | None = None,
                   workers: int | None = None, folds: Sequence[int] | None = None,
                   use_papermill: bool | None = None, progress: bool = True) -> ExperimentResult:
    """Run the LOSO folds not yet complete in ``out_dir``, then score every completed fold.

    ``workers``: local cluster processes (0 or None: one per fold up to the cores; one on a
    CUDA machine); ``folds``: the fold indices to run (default all); ``use_papermill``: run each fold as the
    notebook ``03_train.ipynb`` (default: when the notebook exists) or in-process. Metrics
    follow MEGC2019: all completed folds' predictions concatenated, then UF1/UAR/accuracy;
    when folds are missing or failed, the metrics cover only the completed ones and say so
    (``metrics["folds"]``, a note, and a warning). Every fold failing raises MerError.
    """
    import pandas as pd

    from mer_utils.evaluate import check_coverage, compute_metrics, read_predictions, write_metrics, write_predictions
    from mer_utils.figures import plot_confusion_matrix

    started = time.perf_counter()
    config = config.resolved()
    out_dir = Path(out_dir).resolve()
    if workers is not None:  # 0, as in the notebooks, or None: the default
        workers = check_int("workers", workers, minimum=0, note="0 or None: one per fold up to the cores") or None
    from_environment = not scheduler and bool(os.environ.get("DASK_SCHEDULER_ADDRESS"))
    scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if scheduler:  # before any preprocessing or folder
        check_scheduler(scheduler, from_environment)
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
    created_dir = not out_dir.exists()
    lock = _lock_experiment_dir(out_dir)  # one run at a time in a folder; released on exit, even killed
    claimed_now = not (out_dir / CONFIG_FILE).is_file()
    in_flight = False  # folds sent to a cluster and not all back (an interrupt): some may finish later
    try:
        _claim_experiment_dir(config, out_dir)  # only once the inputs load
        fold_dirs = {i: out_dir / fold_dir_name(i, s) for i, s in enumerate(subjects)}
        tests = {i: [x for x in samples if x.subject_id == s] for i, s in enumerate(subjects)}
        inputs = inputs_digest(samples, config)  # every fold reads every sample (as test or training)
        prints = {i: {**fold_fingerprint(samples, s), "inputs": inputs} for i, s in enumerate(subjects)}
        reasons = {i: fold_staleness(fold_dirs[i], tests[i], prints[i]) for i in range(len(subjects))}
        _warn_stale(out_dir, {i: r for i, r in reasons.items() if r and (fold_dirs[i] / DONE_FILE).is_file()},
                    subjects, chosen)
        pending = {i: fold_dirs[i] for i in chosen if reasons[i]}
        failures = {}
        if pending:
            if config.method != "lbptop" and config.pretrained_weights == "imagenet":  # cropnet.IMAGENET
                from mer_utils.models.cropnet import check_imagenet_weights  # offline: one line now, not per fold

                check_imagenet_weights(config.backbone)
            prepare_inputs(config, samples, workers, progress)
            in_flight = True
            failures = _run_folds(config, pending, subjects, scheduler, workers, use_papermill, progress,
                                  label=out_dir.name, inputs=inputs)
            in_flight = False

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
            warnings.warn(f"{repo_relative(out_dir)}: metrics are {note}", UserWarning, stacklevel=2)
        records = fold_records([fold_dirs[i] for i in completed])  # read once: devices and losses
        mixed = _mixed_devices(records)
        if mixed:
            metrics["notes"].append(mixed)
            warnings.warn(f"{repo_relative(out_dir)}: {mixed}", UserWarning, stacklevel=2)
        write_predictions(table, out_dir / PREDICTIONS_FILE)
        write_metrics(metrics, out_dir / "metrics.json")
        synthetic = ", synthetic data" if is_synthetic(config.root) else ""
        plot_confusion_matrix(metrics["confusion"], classes, path=out_dir / "confusion.png",
                              title=f"{config.method} on {config.protocol}, {len(table)} samples{synthetic}")
        losses = mean_epoch_losses(records)
        if losses:
            atomic_write_text(out_dir / LOSSES_FILE, "epoch,mean_loss\n" + "".join(
                f"{epoch},{loss:.6f}\n" for epoch, loss in enumerate(losses, start=1)))
        return ExperimentResult(config, out_dir, metrics, failures, fold_dirs,
                                time.perf_counter() - started, len(pending), losses)
    except BaseException:
        # a failed start leaves no config.json (unless folds may still finish on a cluster)
        if claimed_now and not in_flight and not any(out_dir.glob(f"fold_*/{DONE_FILE}")):
            (out_dir / CONFIG_FILE).unlink(missing_ok=True)
            (out_dir / LOCK_FILE).unlink(missing_ok=True)  # nor a lock file in a folder that is not an experiment
            if created_dir:
                with contextlib.suppress(OSError):
                    out_dir.rmdir()  # only if empty
        raise
    finally:
        _end_run(lock)


def _mixed_devices(records: Sequence[Mapping]) -> str | None:
    """A note when an experiment's CropNet folds (their ``fold.json`` records) were trained on
    more than one device or precision (a run resumed on another machine, or a cluster of CPU
    and GPU workers): "folds trained on the CPU (float32) for 3 folds and CUDA (bfloat16) for
    23 folds (they differ by rounding)"; None when they agree."""
    from mer_utils.tables import device_counts, device_text

    return f"folds trained {device_text(records)}" if len(device_counts(records)) > 1 else None


def mean_epoch_losses(records: Sequence[Mapping]) -> list[float]:
    """Mean training loss of each epoch over the folds' ``fold.json`` records (empty for the
    LBP-TOP baseline, which has no epochs)."""
    curves = [losses for record in records if (losses := record.get("epoch_losses"))]
    if not curves or len({len(c) for c in curves}) != 1:
        return []
    return np.mean(np.asarray(curves, dtype=float), axis=0).tolist()


# --------------------------------------------------------------------------- the shared store


@dataclass(frozen=True)
class RunOptions:
    """How (not what) LOSO experiments run; none of these changes a result.

    ``store``: the folder of the shared experiment store (each configuration gets its own
    sub-folder, see :func:`mer_utils.config.experiment_key`); ``folds``: "0,3" or "" for
    all; ``scheduler``: a Dask scheduler address, "" for a local cluster of ``workers``
    processes (0: one per core, at most one per fold); ``fold_notebooks``: run each fold
    as an executed notebook 03 (kept in its fold folder) instead of in-process.
    """

    store: str = EXPERIMENTS_DIR
    folds: str = ""
    scheduler: str = ""
    workers: int = 0
    fold_notebooks: bool = False

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, object], **overrides) -> "RunOptions":
        """The options among a notebook's parameters (``experiments_dir`` is the store)."""
        values = {**parameters, **overrides}
        if "experiments_dir" in values and "store" not in overrides:
            values["store"] = values["experiments_dir"]
        names = ("store", "folds", "scheduler", "workers", "fold_notebooks")
        return cls(**{k: values[k] for k in names if k in values and values[k] is not None})


def experiment_dir(config: ExperimentConfig, store: str | os.PathLike = EXPERIMENTS_DIR) -> Path:
    """The folder of ``config``'s experiment in the shared store (relative: from the
    repository root): the same configuration on the same data always gets the same folder,
    whichever notebook or command asks first."""
    return repo_path(store) / experiment_key(config.resolved())


def run_loso(config: ExperimentConfig, options: RunOptions = RunOptions(), out_dir: str | os.PathLike | None = None):
    """One LOSO experiment, resumable (finished folds are kept), in ``out_dir`` or by default
    in its folder of the shared store (:func:`experiment_dir`). A failed fold raises
    MerError naming the subjects (rerunning retries only those). Prints one line before and
    one after; returns the ExperimentResult."""
    from mer_utils.notebook import fold_list

    config = config.resolved()
    out_dir = Path(out_dir) if out_dir is not None else experiment_dir(config, options.store)
    what = f"{config.method} on {config.protocol}"
    if config.method != "lbptop":
        what += f" (cgpo={config.cgpo}, n_key={config.n_key})"
    print(f"{what} -> {repo_relative(out_dir)}", flush=True)
    result = run_experiment(config, out_dir, scheduler=options.scheduler or None, workers=options.workers or None,
                            folds=fold_list(options.folds), use_papermill=options.fold_notebooks, progress=False)
    if result.failures:
        listed = "; ".join(f"{subject}: {message}" for subject, message in result.failures.items())
        raise MerError(f"{repo_relative(out_dir)}: {len(result.failures)} fold(s) failed ({listed}); "
                       "run again to retry them (finished folds are kept)")
    print(f"  {result.summary_line()}", flush=True)
    return result
