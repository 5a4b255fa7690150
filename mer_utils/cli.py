"""Command line: ``mer`` or ``python -m mer_utils``.

Subcommands: data, synth, preprocess, loso, metrics, reproduce, train, predict. Each is a thin
wrapper over a package function; errors of the kit (MerError) print as one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from mer_utils.errors import MerError, one_line_warning



def _add_data_args(p: argparse.ArgumentParser) -> None:
    from mer_utils.data import PROTOCOLS

    p.add_argument("--root", required=True, type=Path,
                   help="data root holding any of CASME2/, SAMM/, SMIC/")
    p.add_argument("--protocol", required=True,
                   help=f"evaluation protocol: one of {', '.join(PROTOCOLS)}")
    p.add_argument("--megc-list", type=Path, default=None,
                   help="MEGC2019 sample list (official CSV, with or without header); "
                        "'official' for the list shipped with the kit")


def _add_apex_arg(p: argparse.ArgumentParser, flag: str = "--apex", dest: str = "apex",
                  default: str | None = "annotated") -> None:
    p.add_argument(flag, dest=dest, default=default, choices=("annotated", "middle", "spotted"),
                   help="where each sample's apex comes from: the annotation (SMIC: middle frame), "
                        "the middle frame, or spotted on the aligned frames (default: "
                        f"{default or 'the model card'})")


def _megc_list(value: Path | None):
    if value is not None and str(value) == "official":
        from mer_utils.paths import OFFICIAL_MEGC2019_LIST
        return OFFICIAL_MEGC2019_LIST
    return value


def _add_training_args(p: argparse.ArgumentParser, methods: tuple[str, ...] | None = None) -> None:
    """The experiment's settings (loso and train); every default is the configuration's (mer_utils.config)."""
    from mer_utils.config import CROPNET_METHODS, METHODS
    from mer_utils.face import FACE_CROP, FACE_CROPS
    from mer_utils.preprocess import N_KEY, PREPROCESS_SIZE
    from mer_utils.train import AUGMENTATIONS, TrainConfig

    train = TrainConfig()
    p.add_argument("--method", default=CROPNET_METHODS[0], choices=methods or METHODS)
    p.add_argument("--epochs", type=int, default=None,
                   help=f"training epochs, fixed before the run (default {train.epochs})")
    p.add_argument("--lr", type=float, default=None,
                   help=f"AdamP peak learning rate of the weights that feed a BatchNorm (default {train.lr:g})")
    p.add_argument("--fc-lr", type=float, default=None,
                   help=f"AdamP peak learning rate of the fully connected layers: head FC, p_i, final FC "
                        f"(default {train.fc_lr:g})")
    p.add_argument("--batch-size", type=int, default=None, help=f"training batch size (default {train.batch_size})")
    p.add_argument("--image-size", type=int, default=None, help=f"CropNet input side (default {train.image_size})")
    p.add_argument("--backbone", default=None, help=f"timm backbone (default {train.backbone})")
    p.add_argument("--pretrained-weights", default=None,
                   help="'imagenet' (timm's ImageNet weights, downloaded once), a local weights file, "
                        "or 'none' to train from scratch (default)")
    p.add_argument("--seed", type=int, default=None, help=f"seed (default {train.seed})")
    p.add_argument("--n-key", type=int, default=None, help=f"key frames per clip, N_key (default {N_KEY})")
    p.add_argument("--augmentation", default=None, choices=AUGMENTATIONS,
                   help=f"training-image augmentation: the paper's four, its flip and rotation only, or none "
                        f"(default {train.augmentation})")
    p.add_argument("--ensemble", type=int, default=None,
                   help=f"networks per fold, trained with seeds seed, seed+1, ...; their softmax probabilities "
                        f"are averaged (default {train.ensemble}: one network, as the paper)")
    p.add_argument("--no-cgpo", action="store_true", help="single-image ablation variant")
    p.add_argument("--no-recalibrate-bn", action="store_true",
                   help="test with BatchNorm's running averages, as the paper does, instead of the statistics "
                        "of one pass over the un-augmented training images (the kit's default)")
    p.add_argument("--face-crop", default=None, choices=FACE_CROPS, help=f"default {FACE_CROP}")
    p.add_argument("--preprocess-size", type=int, default=None,
                   help=f"side of the cached preprocessed images (default {PREPROCESS_SIZE})")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="preprocessing cache (default: <root>/../interim/cache)")


def _experiment_config(args: argparse.Namespace):
    from mer_utils.config import ExperimentConfig

    if args.megc_list is not None and args.protocol != "megc2019":  # from_parameters leaves a notebook's list out
        raise MerError(f"--megc-list applies to --protocol megc2019 only, not {args.protocol!r}")
    values = {k: v for k, v in vars(args).items() if k != "func"}
    values.update(root=str(Path(args.root).resolve()), cgpo=False if args.no_cgpo else None,
                  recalibrate_bn=False if args.no_recalibrate_bn else None,
                  megc_list=str(Path(str(_megc_list(args.megc_list))).resolve()) if args.megc_list else "",
                  cache_dir=str(Path(args.cache_dir).resolve()) if args.cache_dir else "",
                  pretrained_weights=(str(Path(args.pretrained_weights).resolve())
                                      if args.pretrained_weights and Path(args.pretrained_weights).exists()
                                      else args.pretrained_weights))
    return ExperimentConfig.from_parameters(values)


def cmd_data(args: argparse.Namespace) -> int:
    from mer_utils.data import load_samples, samples_to_records, summary_table

    samples = load_samples(args.root, args.protocol, megc_list=_megc_list(args.megc_list),
                           apex=args.apex, face_crop=args.face_crop)
    if args.json:
        records = samples_to_records(samples)
        if args.apex != "annotated":
            for record, sample in zip(records, samples):
                record["annotated_apex"] = sample.extra.get("annotated_apex")
                record["apex_source"] = sample.extra.get("apex_source")
        json.dump(records, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"{args.protocol} on {args.root}")
        print(summary_table(samples))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from mer_utils.synth import make_synthetic

    t0 = time.perf_counter()
    counts = make_synthetic(args.out, full=args.full, amplitude=args.amplitude,
                            noise=args.noise, seed=args.seed, workers=args.workers,
                            overwrite=args.overwrite, subjects=args.subjects,
                            clips_per_subject=args.clips_per_subject)
    total = sum(counts.values())
    detail = ", ".join(f"{k}: {v}" for k, v in counts.items())
    reused = ("" if not counts.reused else
              f"; already there with these parameters (seed {args.seed}), left as they were: {', '.join(counts.reused)}")
    print(f"synthetic data in {args.out}: {total} clips ({detail}) in {time.perf_counter() - t0:.1f} s{reused}")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from mer_utils.data import load_samples
    from mer_utils.preprocess import preprocess_samples

    samples = load_samples(args.root, args.protocol, megc_list=_megc_list(args.megc_list))
    result = preprocess_samples(samples, method=args.method, cache_dir=args.out,
                                n_key=args.n_key, face_crop=args.face_crop,
                                size=args.size, workers=args.workers)
    print(f"{args.method}: {len(result.paths)} images in {args.out}: "
          f"{result.computed} computed, {result.cached} read from the cache, "
          f"{result.seconds:.1f} s")
    return 0


def cmd_loso(args: argparse.Namespace) -> int:
    from mer_utils.evaluate import format_metrics
    from mer_utils.runs import run_experiment

    config = _experiment_config(args)
    result = run_experiment(config, args.out, scheduler=args.scheduler,
                            workers=args.workers, folds=args.folds, use_papermill=args.fold_notebooks)
    print(format_metrics(result.metrics))
    print(f"{result.summary_line()} -> {result.out_dir}")
    if result.failures:
        for subject, message in result.failures.items():
            print(f"fold {subject} failed: {message}", file=sys.stderr)
        return 1
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from mer_utils.evaluate import format_metrics, metrics_from_file

    classes = [c for c in args.classes.split(",")] if args.classes is not None else None
    # the table's "note:" lines say the notes; with --json, the warnings are the console's copy
    metrics = metrics_from_file(args.predictions, protocol=args.protocol, classes=classes, warn_notes=args.json)
    if args.json:
        json.dump(metrics, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_metrics(metrics))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mer_utils.inference import load_model, train_protocol

    t0 = time.perf_counter()
    folder = train_protocol(_experiment_config(args), args.out, apex=args.apex, workers=args.workers,
                            max_threads=args.threads, overwrite=args.overwrite)
    card = load_model(folder).card
    data = card["training_data"]
    print(f"model in {folder}: CropNet ({card['preprocessing']['method']}) on {data['n_samples']} samples of "
          f"{data['n_subjects']} subjects ({data['description']}), classes {', '.join(card['classes'])}, "
          f"{card['training']['epochs']} epochs, final loss {card['training']['epoch_losses'][-1]:.4f}, "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def _check_predictions_target(out: Path, overwrite: bool = False) -> None:
    """--out may be a new file, or with ``overwrite`` a predictions table the kit wrote (its
    header); never a folder or a file of the user's. Checked before any clip is predicted."""
    from mer_utils.evaluate import REQUIRED_COLUMNS

    if out.is_dir():
        raise MerError(f"--out {out} is a folder: give the predictions CSV file to write")
    if not out.parent.is_dir():
        raise MerError(f"--out {out}: its folder {out.parent} does not exist or is not a folder")
    if out.exists():
        with open(out, encoding="utf-8", errors="replace") as handle:
            header = handle.readline().strip()
        if not header.startswith(",".join(REQUIRED_COLUMNS)):
            raise MerError(f"--out {out} exists and is not a predictions table written by the kit: "
                           "move it or choose another file")
        if not overwrite:
            raise MerError(f"--out {out} already exists (a predictions table): choose another file, or replace it "
                           "with --overwrite")


def cmd_predict(args: argparse.Namespace) -> int:
    from mer_utils.inference import format_prediction, load_model, predict_clip, predict_protocol

    if (args.clip is None) == (args.root is None):
        both = "; --clip and --root were both given" if args.clip is not None else ""
        raise MerError(f"mer predict needs either --clip PATH or --root DIR --protocol P --out FILE{both}")
    if args.root is not None:
        if args.protocol is None or args.out is None:
            raise MerError("mer predict --root needs --protocol and --out (the predictions CSV to write)")
        if any(v is not None for v in (args.onset, args.apex, args.offset)):
            raise MerError("--onset/--apex/--offset apply to --clip only; a data root carries its annotations")
        _check_predictions_target(Path(args.out), args.overwrite)
    else:  # a clip is predicted as the model was trained; options that only shape a data root's run would be ignored
        root_only = {"--protocol": args.protocol, "--megc-list": args.megc_list, "--apex-mode": args.apex_mode,
                     "--method": args.method, "--n-key": args.n_key, "--face-crop": args.face_crop,
                     "--cache-dir": args.cache_dir, "--out": args.out, "--overwrite": args.overwrite or None}
        given = [flag for flag, value in root_only.items() if value is not None]
        if given:
            raise MerError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to --root only: "
                           "a --clip is read with the model's own preprocessing and printed (--json for JSON)")
    model = load_model(args.model)
    if args.clip is not None:
        prediction = predict_clip(model, args.clip, onset=args.onset, apex=args.apex, offset=args.offset)
        if args.json:
            json.dump(prediction.to_json(), sys.stdout)
            sys.stdout.write("\n")
        else:
            print(format_prediction(prediction))
        return 0
    from mer_utils.evaluate import compute_metrics, format_metrics, write_predictions

    frame = predict_protocol(model, args.root, args.protocol, megc_list=_megc_list(args.megc_list),
                             apex=args.apex_mode, cache_dir=args.cache_dir, workers=args.workers,
                             method=args.method, n_key=args.n_key, face_crop=args.face_crop)
    write_predictions(frame, args.out)
    print(f"{len(frame)} predictions in {args.out}")
    print(format_metrics(compute_metrics(frame, classes=model.classes)))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mer_utils.reproduce import reproduce, typed_overrides

    overrides = typed_overrides(args.parameter or [], args.only)
    index = reproduce(data_root=args.data_root, profile=args.profile, only=args.only,
                      runs_dir=args.runs_dir, reports_dir=args.reports_dir, overrides=overrides)
    print(f"reports: {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from mer_utils import paths
    from mer_utils.config import CROPNET_METHODS
    from mer_utils.data import PROTOCOLS
    from mer_utils.face import FACE_CROP, FACE_CROPS
    from mer_utils.preprocess import N_KEY, PREPROCESS_SIZE

    parser = argparse.ArgumentParser(
        prog="mer",
        description="mer-residual: micro-expression recognition with pixel residual sums "
                    "and CropNet (Zhao, Chen and Luo 2021), reproducible end to end.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("data", help="list a protocol's samples (counts, or --json)")
    _add_data_args(p)
    p.add_argument("--json", action="store_true", help="print the samples as a JSON list")
    _add_apex_arg(p)
    p.add_argument("--face-crop", default="dlib", choices=("dlib", "none"),
                   help="face alignment used to spot the apex (--apex spotted)")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("synth", help="generate the synthetic CASME2/, SAMM/, SMIC/ folders")
    p.add_argument("--out", required=True, type=Path, help="folder to create")
    p.add_argument("--full", action="store_true",
                   help="real-sized sets (CASME II ~255 clips, the MEGC2019 composite list)")
    p.add_argument("--amplitude", type=float, default=3.0,
                   help="peak facial displacement in pixels (default 3)")
    p.add_argument("--noise", type=float, default=2.0,
                   help="sensor noise std in grey levels (default 2)")
    p.add_argument("--seed", type=int, default=0, help="another seed gives other faces, timings and movements")
    p.add_argument("--subjects", type=int, default=None, help="keep the first N subjects of each dataset")
    p.add_argument("--clips-per-subject", type=int, default=None, help="keep the first N clips of each subject")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing synthetic folder made by this kit")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("preprocess", help="compute ARS/RRS/flow images into the cache")
    _add_data_args(p)
    p.add_argument("--method", default=CROPNET_METHODS[0], choices=CROPNET_METHODS)
    p.add_argument("--n-key", type=int, default=N_KEY, help=f"number of key frames (default {N_KEY})")
    p.add_argument("--face-crop", default=FACE_CROP, choices=FACE_CROPS)
    p.add_argument("--size", type=int, default=PREPROCESS_SIZE, help=f"output side in pixels (default {PREPROCESS_SIZE})")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--out", required=True, type=Path, help="cache folder")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("loso", help="leave-one-subject-out experiment, then metrics")
    _add_data_args(p)
    _add_training_args(p)
    p.add_argument("--folds", type=int, nargs="+", default=None,
                   help="run only these fold indices (default: all)")
    p.add_argument("--scheduler", default=None,
                   help="Dask scheduler address (default: $DASK_SCHEDULER_ADDRESS, "
                        "else a local cluster)")
    p.add_argument("--workers", type=int, default=None,
                   help="local cluster workers (default: one per fold up to the cores; one on a CUDA machine)")
    p.add_argument("--fold-notebooks", action=argparse.BooleanOptionalAction, default=None,
                   help="run each fold as notebook 03, kept executed in its fold folder (default: when the "
                        "repository's notebook is there), or in the worker's process (--no-fold-notebooks: "
                        "no kernel start per fold, the same results)")
    p.add_argument("--out", required=True, type=Path, help="experiment folder")
    p.set_defaults(func=cmd_loso)

    p = sub.add_parser("metrics", help="recompute Accuracy/UF1/UAR from a predictions file")
    p.add_argument("predictions", type=Path, help="predictions CSV")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--protocol", default=None,
                       help=f"score over this protocol's classes ({', '.join(PROTOCOLS)}); default: "
                            "the prob_ columns, else the one protocol holding every label")
    which.add_argument("--classes", default=None,
                       help="score over these classes, comma-separated in order, e.g. negative,positive,surprise")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("reproduce", help="run every numbered notebook (01-08) with papermill, render reports/")
    p.add_argument("--data-root", type=Path, default=Path(paths.SYNTHETIC_DIR),
                   help="folder holding CASME2/, SAMM/, SMIC/ (default: the synthetic data)")
    p.add_argument("--profile", default="synthetic-cpu", choices=("synthetic-cpu", "full-gpu"),
                   help="parameter set: small and CPU-fast for the synthetic data, or the paper's for a GPU")
    p.add_argument("--only", nargs="+", default=None, help="notebook numbers, e.g. 01 04 (default: all)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
                   help="set a notebook parameter over the profile's, as papermill's -p (repeatable), "
                        "e.g. -p ensemble 2 -p epochs 30; typed as the notebooks declare it")
    p.add_argument("--runs-dir", type=Path, default=Path(paths.RUNS_DIR))
    p.add_argument("--reports-dir", type=Path, default=Path(paths.REPORTS_DIR))
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("train", help="train CropNet on every sample of a protocol, export a model folder")
    _add_data_args(p)
    _add_apex_arg(p)
    _add_training_args(p, methods=CROPNET_METHODS)
    p.add_argument("--workers", type=int, default=1, help="preprocessing processes")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as is)")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.add_argument("--out", required=True, type=Path, help="model folder to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict a clip (frames folder or video) or a whole data root")
    p.add_argument("--model", required=True, type=Path, help="model folder written by `mer train`")
    p.add_argument("--clip", type=Path, default=None,
                   help="folder of numbered frame images, or a video file (mp4, avi, mov, ...)")
    p.add_argument("--onset", type=int, default=None, help="window start frame (default: the first; video frames count from 0)")
    p.add_argument("--apex", type=int, default=None, help="apex frame (default: spotted)")
    p.add_argument("--offset", type=int, default=None, help="window end frame (default: the last)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--root", type=Path, default=None, help="data root: predict every sample of --protocol")
    p.add_argument("--protocol", default=None, help=f"with --root: one of {', '.join(PROTOCOLS)}")
    p.add_argument("--megc-list", type=Path, default=None, help="with --root and megc2019: the sample list")
    _add_apex_arg(p, flag="--apex-mode", dest="apex_mode", default=None)
    p.add_argument("--method", default=None, help="with --root: refuse unless the model uses this method")
    p.add_argument("--n-key", type=int, default=None, help="with --root: refuse unless the model uses this N_key")
    p.add_argument("--face-crop", default=None, help="with --root: refuse unless the model uses this face crop")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="preprocessing cache (default: <root>/../interim/cache)")
    p.add_argument("--workers", type=int, default=1, help="preprocessing processes")
    p.add_argument("--out", type=Path, default=None, help="with --root: predictions CSV to write (a new file)")
    p.add_argument("--overwrite", action="store_true",
                   help="with --root: replace --out when it is a predictions table the kit wrote earlier")
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    console_format, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        return args.func(args)
    except MerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, not the stack of every thread and worker
        print("interrupted: finished LOSO folds, cached images and executed notebooks are kept; the same command "
              "goes on from them", file=sys.stderr)
        return 130
    except OSError as exc:  # a path that is a file, a folder, missing or not writable
        if isinstance(exc, BrokenPipeError):  # `mer data --json | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = console_format


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
