"""One LOSO fold at the paper's settings, measured side by side (run by hand; not a test).

    mer synth --out data/synthetic-full --full
    .venv/bin/python benchmarks/gpu_fold.py --root data/synthetic-full --epochs 5

Trains fold 0 of ``--protocol`` (CASME II 5-class by default) with the configuration's
settings (320 px, batch 16, CGPO; ``--epochs`` fewer than the 30 to keep it short) on the
default device (CUDA when available), once for each number of DataLoader processes in
``--loader-workers`` (default: none, then the default for this device), each in the calling
process and, with ``--dask``, once more in a one-worker local Dask cluster as ``mer loso``
runs it, and with ``--side-by-side`` two more folds at the same time in a two-worker
cluster (``mer loso --workers 2``), both sharing the device. Prints, per run: wall seconds,
seconds per epoch (the first one starts the loader processes and, on CUDA, meets cuDNN's
first use of each batch shape), recalibration and
prediction seconds, peak GPU memory, and the ratio of each run's time to the first one's
(times exclude loading the samples and images). ``--memory-format`` sets the in-process
runs' layout; compare layouts in separate invocations, since cuDNN's kernels built in a
process are reused by its later runs. Preprocessing goes through the usual cache first and
is not timed. On a CPU-only machine it runs too (slowly at 320 px: pass ``--image-size 64``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
import warnings
from pathlib import Path


def layout(channels_last: bool | None) -> str:
    return "channels-last" if channels_last else "contiguous"


def _fold_in_process(config, samples, arrays, subject: str, loader_workers: int | None,
                     channels_last: bool | None = None) -> dict:
    from mer_utils.train import train_fold

    train = dataclasses.replace(config.train_config(), num_workers=loader_workers, channels_last=channels_last)
    started = time.perf_counter()
    result = train_fold(samples, subject, train, arrays)
    return {"wall": time.perf_counter() - started, "seconds": result.seconds, "peak": result.gpu_peak_memory_mib,
            "device": result.device, "precision": result.config.get("amp_dtype"),
            "loader": result.config.get("num_workers"), "layout": layout(result.channels_last), "subject": subject,
            "n_train": result.n_train, "losses": result.epoch_losses}


def _folds_in_dask(config, folds: list[int]) -> list[dict]:
    """The folds in a local Dask cluster of one worker per fold, all at a time, as ``mer loso
    --workers N`` runs them."""
    from mer_utils.runs import close_local_clusters, run_experiment

    with tempfile.TemporaryDirectory() as folder:
        try:
            with warnings.catch_warnings():  # the few folds it runs are the point: "metrics are partial" is expected
                warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)
                result = run_experiment(config, Path(folder) / "experiment", folds=folds, workers=len(folds),
                                        use_papermill=False, progress=False)
        finally:  # the runner keeps its cluster for the next experiment: its workers would hold their GPU memory
            close_local_clusters()
        if result.failures:
            raise SystemExit(f"the Dask fold failed: {result.failures}")
        records = [json.loads((result.fold_dirs[fold] / "fold.json").read_text()) for fold in folds]
    # each fold's wall time less loading the samples and images, as train_fold is timed in process
    return [{"wall": record["wall_time_s"] - record["seconds"]["load"], "seconds": record["seconds"],
             "peak": record["gpu_peak_memory_mib"], "device": record["device"], "precision": record["precision"],
             "loader": record["loader_workers"], "layout": layout(record.get("channels_last")),
             "subject": record["subject"], "n_train": record["n_train"], "losses": record["epoch_losses"]}
            for record in records]


def main() -> None:
    from mer_utils.config import ExperimentConfig
    from mer_utils.data import load_samples
    from mer_utils.preprocess import load_image, preprocess_samples
    from mer_utils.runs import leave_one_subject_out

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, type=Path, help="data root (e.g. mer synth --full output)")
    parser.add_argument("--protocol", default="casme2-5class")
    parser.add_argument("--method", default="ars")
    parser.add_argument("--face-crop", default=None, help="default: the configuration's (dlib)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per fold (the configuration's default is 30)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the configuration's (320)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--loader-workers", default="0,default",
                        help="comma-separated DataLoader process counts; 'default' is the device's default")
    parser.add_argument("--memory-format", choices=("default", "contiguous", "channels-last"), default="default",
                        help="of the in-process runs (the Dask run keeps the default: contiguous on CUDA, "
                             "channels-last on CPU); cuDNN's first use of a layout in a process is timed too")
    parser.add_argument("--dask", action="store_true", help="also run the fold in a one-worker local Dask cluster")
    parser.add_argument("--side-by-side", action="store_true",
                        help="also run folds FOLD+1 and FOLD+2 at the same time in a two-worker local Dask cluster "
                             "(two folds sharing the device; implies --dask) and print the folds per hour against "
                             "the one-worker run")
    args = parser.parse_args()

    config = ExperimentConfig(root=str(args.root), protocol=args.protocol, method=args.method,
                              face_crop=args.face_crop, epochs=args.epochs, image_size=args.image_size).resolved()
    # the samples and their images, loaded once for every in-process run (the cache is filled first)
    samples = load_samples(config.root, config.protocol, megc_list=config.megc_list)
    images = preprocess_samples(samples, method=config.method, cache_dir=config.cache_dir, n_key=config.n_key,
                                face_crop=config.face_crop, size=config.preprocess_size, workers=None, progress=True)
    arrays = {key: load_image(path) for key, path in images.paths.items()}
    subject = leave_one_subject_out(samples)[args.fold]
    channels_last = {"default": None, "contiguous": False, "channels-last": True}[args.memory_format]
    runs = []
    for value in args.loader_workers.split(","):
        workers = None if value.strip() == "default" else int(value)
        runs.append((f"in process, loader processes {value.strip()}",
                     _fold_in_process(config, samples, arrays, subject, workers, channels_last)))
    alone = _folds_in_dask(config, [args.fold])[0] if args.dask or args.side_by_side else None
    if alone is not None:
        runs.append(("one-worker local Dask cluster, loader processes default", alone))
    pair = _folds_in_dask(config, [args.fold + 1, args.fold + 2]) if args.side_by_side else []
    for k, run in enumerate(pair):
        runs.append((f"two-worker local Dask cluster, fold {args.fold + 1 + k} beside fold {args.fold + 2 - k}, "
                     "loader processes default", run))
    first = runs[0][1]
    print(f"\nfold {args.fold} ({first['subject']}, {first['n_train']} training clips), {config.epochs} epochs at "
          f"{config.image_size} px, batch {config.batch_size}, on {first['device']} ({first['precision']}, "
          f"{first['layout']})")
    for name, run in runs:
        epochs = run["seconds"].get("epochs", [])
        rest = epochs[1:] or epochs
        peak = "n/a (CPU)" if run["peak"] is None else f"{run['peak']:.0f} MiB"
        print(f"- {name} ({run['loader']} used, {run['layout']}): {run['wall']:.1f} s, "
              f"ratio {run['wall'] / first['wall']:.2f}; "
              f"first epoch {epochs[0] if epochs else float('nan'):.1f} s, later epochs "
              f"{sum(rest) / max(1, len(rest)):.1f} s each; recalibrate {run['seconds'].get('recalibrate', 0):.1f} s, "
              f"predict {run['seconds'].get('predict', 0):.1f} s; peak GPU memory {peak}; "
              f"final loss {run['losses'][-1]:.3f}")
    if pair:
        walls = [run["wall"] for run in pair]
        side = " and ".join(f"{wall:.1f}" for wall in walls)
        print(f"- two folds side by side against one alone: {2 * alone['wall'] / max(walls):.2f} times the folds "
              f"per hour ({alone['wall']:.1f} s alone; {side} s side by side)")


if __name__ == "__main__":
    main()
