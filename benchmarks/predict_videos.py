"""Accuracy of a trained model on clips it never saw, each given as a video file: run by hand.

    .venv/bin/python -m mer_utils train --root data/synthetic --protocol casme2-5class \\
        --epochs 30 --image-size 64 --preprocess-size 128 --out models/casme2
    .venv/bin/python benchmarks/predict_videos.py --model models/casme2 --root /tmp/synth_seed1 \\
        --out /tmp/videos

Every sample of the model's protocol under ``--root`` (e.g. a synthetic set made with another
seed: ``mer synth --out /tmp/synth_seed1 --seed 1``) is written as a video (onset..offset,
``--suffix``, lossless FFV1 for .avi) and predicted like ``mer predict --model M --clip VIDEO``
(the whole video as the window, the apex spotted). Prints the accuracy, UF1 and UAR, the
apex error of spotting and of the middle frame, and writes ``<out>/predictions.csv``, which
``mer metrics`` scores.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from mer_utils.data import load_samples
from mer_utils.evaluate import compute_metrics, format_metrics, write_predictions
from mer_utils.inference import load_model, predict_videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (mer train)")
    parser.add_argument("--root", type=Path, required=True, help="data root with the clips to predict")
    parser.add_argument("--out", type=Path, required=True, help="folder for the videos and predictions.csv")
    parser.add_argument("--suffix", default=".avi", choices=(".avi", ".mp4", ".mov", ".mkv"))
    args = parser.parse_args()
    clock = time.perf_counter()
    model = load_model(args.model)
    samples = load_samples(args.root, model.card["protocol"])
    table = predict_videos(model, samples, args.out, suffix=args.suffix)
    predictions = table.drop(columns=["apex_spotted", "apex_annotated", "apex_middle", "video"])
    write_predictions(predictions, args.out / "predictions.csv")
    correct = int((table["true_label"] == table["pred_label"]).sum())
    print(f"{correct} of {len(table)} clips right as {args.suffix} videos ({correct / len(table):.1%}), "
          f"{time.perf_counter() - clock:.0f} s; predictions in {args.out / 'predictions.csv'}")
    print(format_metrics(compute_metrics(predictions, classes=model.classes)))
    annotated = table.dropna(subset=["apex_annotated"])
    print(f"apex error over {len(annotated)} annotated clips: spotted "
          f"{(annotated['apex_spotted'] - annotated['apex_annotated']).abs().mean():.2f} frames, middle frame "
          f"{(annotated['apex_middle'] - annotated['apex_annotated']).abs().mean():.2f}")


if __name__ == "__main__":
    main()
