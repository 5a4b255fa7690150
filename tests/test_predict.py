"""Train on a whole protocol, export a model folder, load it, predict clips (frame folders and
videos) and data roots; every bad input is one clear line naming the clip or folder."""
from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

import mer_utils
from mer_utils import tables
from mer_utils.cli import main
from mer_utils.config import ExperimentConfig
from mer_utils.data import load_samples
from mer_utils.errors import ConfigError, DatasetError, PreprocessError
from mer_utils.evaluate import metrics_from_file
from mer_utils.train import processor_name
from mer_utils.inference import (CARD_FILE, CARD_FORMAT, WEIGHTS_FILE, load_model, predict_clip, predict_protocol,
                                 read_clip, tile_influence, train_protocol, write_video)
from mer_utils.spotting import with_apex
from mer_utils.synth import make_synthetic

pytestmark = pytest.mark.slow
TINY = dict(protocol="casme2-5class", epochs=1, image_size=32, preprocess_size=48, batch_size=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A model trained on a tiny synthetic CASME II (2 subjects), and unseen clips (seed 1)."""
    base = tmp_path_factory.mktemp("predict")
    make_synthetic(base / "data", datasets=("casme2",), subjects=2, workers=1, progress=False)
    make_synthetic(base / "unseen", datasets=("casme2",), subjects=1, seed=1, workers=1, progress=False)
    model_dir = train_protocol(ExperimentConfig(root=str(base / "data"), **TINY), base / "model", max_threads=1,
                               progress=False)
    unseen = load_samples(base / "unseen", "casme2-5class")
    return base, model_dir, unseen


def test_model_folder_describes_itself(setup):
    base, model_dir, _ = setup
    assert (model_dir / WEIGHTS_FILE).is_file()
    card = json.loads((model_dir / CARD_FILE).read_text())
    assert card["classes"] == ["others", "disgust", "happiness", "repression", "surprise"]
    assert card["protocol"] == "casme2-5class" and card["kit_version"] == mer_utils.__version__
    assert card["preprocessing"] == {"method": "ars", "n_key": 5, "face_crop": "dlib", "size": 48,
                                     "preprocess_version": 1}
    assert card["model"]["backbone"] == "rexnet_100" and card["model"]["pretrained_weights"] is None
    assert card["model"]["image_size"] == 32 and card["training"]["epochs"] == 1
    data = card["training_data"]
    assert data["synthetic"] is True and data["n_samples"] == 13 and data["n_subjects"] == 2
    assert "synthetic data" in data["description"] and card["created"]
    with pytest.raises(ConfigError, match="already holds a model"):
        train_protocol(ExperimentConfig(root=str(base / "data"), **TINY), model_dir, progress=False)


def test_predict_a_frame_folder_and_the_same_clip_as_a_video(setup, tmp_path):
    _, model_dir, unseen = setup
    model = load_model(model_dir)
    sample = unseen[0]
    folder = sample.frames[0].parent
    from_frames = predict_clip(model, folder)
    assert from_frames.label in model.classes and from_frames.apex_source == "spotted"
    assert sum(from_frames.probabilities.values()) == pytest.approx(1.0)
    assert (from_frames.onset, from_frames.offset) == (sample.frame_numbers[0], sample.frame_numbers[-1])
    video = write_video(sample.frames, tmp_path / "clip.avi")  # lossless FFV1: the same pixels
    from_video = predict_clip(model, video)
    assert from_video.onset == 0 and from_video.offset == sample.n_frames - 1
    assert from_video.apex - from_video.onset == from_frames.apex - from_frames.onset
    assert np.allclose(list(from_video.probabilities.values()), list(from_frames.probabilities.values()), atol=1e-5)
    given = predict_clip(model, folder, onset=sample.onset, apex=sample.apex, offset=sample.offset)
    assert given.apex == sample.apex and given.apex_source == "annotated"
    influence = tile_influence(model, from_frames.image)
    assert list(influence.index) == [f"z{i}" for i in range(10)]
    assert influence["probability blanked"].between(0, 1).all()


def test_cli_train_then_predict_json_and_a_data_root(setup, tmp_path, capsys):
    base, model_dir, unseen = setup
    clip = unseen[1].frames[0].parent
    assert main(["predict", "--model", str(model_dir), "--clip", str(clip), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert set(record) >= {"label", "probabilities", "onset", "apex", "offset", "apex_source"}
    assert record["apex_source"] == "spotted" and set(record["probabilities"]) == set(load_model(model_dir).classes)
    assert record["model"]["folder"] == str(model_dir) and record["model"]["synthetic"] is True
    assert record["model"]["weights_sha256"] == load_model(model_dir).card["weights"]["sha256"]
    assert len(record["key_frames"]) == 5
    assert main(["predict", "--model", str(model_dir), "--clip", str(clip)]) == 0
    text = capsys.readouterr().out
    assert "window: onset" in text
    assert f"model: {model_dir} (ars + CropNet, casme2-5class), trained on synthetic data" in text
    assert "a test of the pipeline, not a model of real micro-expressions" in text
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--model", str(model_dir), "--root", str(base / "unseen"),
                 "--protocol", "casme2-5class", "--out", str(out)]) == 0
    assert metrics_from_file(out)["n"] == len(unseen)
    # the apex: the model card's setting (annotated, as trained) unless --apex-mode says otherwise
    table = pd.read_csv(out)
    assert dict(zip(table["clip"], table["apex"])) == {s.clip: s.apex for s in unseen}
    middle = tmp_path / "middle.csv"
    assert main(["predict", "--model", str(model_dir), "--root", str(base / "unseen"), "--protocol", "casme2-5class",
                 "--apex-mode", "middle", "--out", str(middle)]) == 0
    expected = {s.clip: s.apex for s in with_apex(unseen, "middle")}
    assert dict(zip(pd.read_csv(middle)["clip"], pd.read_csv(middle)["apex"])) == expected != {
        s.clip: s.apex for s in unseen}
    assert main(["metrics", str(out)]) == 0
    capsys.readouterr()
    again = ["predict", "--model", str(model_dir), "--root", str(base / "unseen"), "--protocol", "casme2-5class",
             "--out", str(out)]
    before = out.read_bytes()
    assert error_line(capsys, again) == (f"error: --out {out} already exists (a predictions table): choose another "
                                         "file, or replace it with --overwrite")
    assert out.read_bytes() == before
    assert main(again + ["--overwrite"]) == 0 and "training clips" not in capsys.readouterr().err
    # the model's own training data: scored, with a warning that these are not held-out clips
    with pytest.warns(UserWarning, match="its scores here are on training clips, not held-out ones"):
        assert main(["predict", "--model", str(model_dir), "--root", str(base / "data"), "--protocol",
                     "casme2-5class", "--out", str(tmp_path / "train.csv")]) == 0
    frame = predict_protocol(load_model(model_dir), base / "unseen", "casme2-5class", apex="spotted")
    assert len(frame) == len(unseen) and list(frame.columns[:5]) == ["dataset", "subject", "clip", "true_label",
                                                                     "pred_label"]


def test_cli_train_writes_a_model(setup, tmp_path, capsys):
    base, _, _ = setup
    code = main(["train", "--root", str(base / "unseen"), "--protocol", "casme2-5class", "--epochs", "1",
                 "--image-size", "32", "--preprocess-size", "48", "--batch-size", "8", "--threads", "1",
                 "--lr", "0.002", "--augmentation", "none", "--seed", "3", "--out", str(tmp_path / "m")])
    assert code == 0 and "model in" in capsys.readouterr().out
    card = load_model(tmp_path / "m").card
    assert card["training_data"]["n_subjects"] == 1
    # the options reach the model as `mer loso` passes them to its folds (one ExperimentConfig)
    assert (card["training"]["lr"], card["training"]["augmentation"], card["training"]["seed"]) == (0.002, "none", 3)
    assert card["model"]["image_size"] == 32 and card["preprocessing"]["size"] == 48


# ----------------------------------------------------------------------------- bad input


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_bad_clips_are_one_line_naming_the_clip(setup, tmp_path, capsys):
    _, model_dir, unseen = setup
    model = ["predict", "--model", str(model_dir), "--clip"]
    one = tmp_path / "one_frame"
    one.mkdir()
    shutil.copy(unseen[0].frames[0], one / "img1.jpg")
    assert str(one) in error_line(capsys, model + [str(one)]) and "at least 2" in error_line(capsys, model + [str(one)])
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    line = error_line(capsys, model + [str(broken)])
    assert str(broken) in line and "video" in line
    folder = str(unseen[0].frames[0].parent)
    first, last = unseen[0].frame_numbers[0], unseen[0].frame_numbers[-1]
    line = error_line(capsys, model + [folder, "--onset", str(last), "--offset", str(first)])
    assert folder in line and f"onset {last} is after offset {first}" in line
    line = error_line(capsys, model + [folder, "--offset", str(last + 50)])
    assert folder in line and "outside the clip" in line
    line = error_line(capsys, model + [folder, "--offset", "-1"])  # the frame, not "onset N is after offset -1"
    assert folder in line and "offset frame -1 is outside the clip" in line
    gapped = tmp_path / "gapped"
    gapped.mkdir()
    for frame in unseen[0].frames:
        shutil.copy(frame, gapped / frame.name)
    skipped = unseen[0].frame_numbers[3]
    next(p for p in gapped.iterdir() if p.stem.endswith(str(skipped))).unlink()
    line = error_line(capsys, model + [str(gapped), "--apex", str(skipped)])
    assert f"apex frame {skipped} has no file: the clip's frame numbers skip it" in line
    blank = tmp_path / "no_face"
    blank.mkdir()
    rng = np.random.default_rng(0)
    for n in range(1, 13):
        cv2.imwrite(str(blank / f"frame{n:03d}.png"), rng.integers(100, 110, (120, 160, 3), dtype=np.uint8))
    line = error_line(capsys, model + [str(blank)])
    assert str(blank) in line and "no face" in line
    faceless = write_video(sorted(blank.iterdir()), tmp_path / "no_face.avi")
    line = error_line(capsys, model + [str(faceless)])
    assert str(faceless) in line and "no face found in start frame (video frame 0)" in line
    line = error_line(capsys, model + [str(tmp_path / "missing")])
    assert "does not exist" in line


def test_clips_that_would_give_a_meaningless_answer_are_refused(setup, tmp_path, capsys):
    """A still clip, a truncated video and frames numbered by timestamp: one line each, not a
    prediction of an empty image, of half a clip, or an error naming a frame the user never gave."""
    base, model_dir, unseen = setup
    model = ["predict", "--model", str(model_dir), "--clip"]
    sample = unseen[0]
    still = tmp_path / "still"
    still.mkdir()
    for n in range(12):
        shutil.copy(sample.frames[0], still / f"img{n + 1}.jpg")
    line = error_line(capsys, model + [str(still)])
    assert str(still) in line and "no movement between its frames 1..12" in line and "nothing to classify" in line
    video = write_video(sample.frames, tmp_path / "cut.avi")
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    line = error_line(capsys, model + [str(video)])
    assert str(video) in line and f"of the {sample.n_frames} frames its header declares" in line
    assert "truncated or damaged" in line
    stamped = tmp_path / "stamped"
    stamped.mkdir()
    for n, frame in enumerate(sample.frames):
        shutil.copy(frame, stamped / f"frame_{n * 33:05d}.jpg")
    line = error_line(capsys, model + [str(stamped)])
    assert str(stamped) in line and "clip/" not in line
    assert f"frame numbers are not consecutive ({sample.n_frames} files numbered 0..{(sample.n_frames - 1) * 33})" in line
    line = error_line(capsys, ["predict", "--model", str(model_dir / CARD_FILE), "--clip", str(still)])
    assert f"is a file: give the model folder" in line and f"({model_dir})" in line


def test_a_long_recording_warns_and_names_the_apex(setup, tmp_path, capsys):
    """A short expression inside a long still recording: predicted, with a warning that its
    window is far longer than the training clips' and where the spotted apex is."""
    _, model_dir, unseen = setup
    sample = unseen[0]
    longest = load_model(model_dir).card["training_data"]["window_frames"][-1]
    long = tmp_path / "long"
    long.mkdir()
    frames = [sample.frames[0]] * (3 * longest) + list(sample.frames)
    for n, frame in enumerate(frames):
        shutil.copy(frame, long / f"img{n}.jpg")
    with pytest.warns(UserWarning) as caught:
        assert main(["predict", "--model", str(model_dir), "--clip", str(long)]) == 0
    assert "window: onset 0" in capsys.readouterr().out
    warning = [str(w.message) for w in caught if "more than twice the longest training clip's" in str(w.message)]
    assert len(warning) == 1 and str(long) in warning[0] and "give --onset near the expression's start" in warning[0]


def test_a_clip_shorter_than_the_minimum_window_warns(setup, tmp_path, capsys):
    _, model_dir, unseen = setup
    sample = unseen[0]
    short = tmp_path / "short"
    short.mkdir()
    for n, number in enumerate((sample.onset, sample.apex - 1, sample.apex)):
        shutil.copy(sample.frame_path(number), short / f"img{n + 1}.jpg")
    with pytest.warns(UserWarning) as caught:
        assert main(["predict", "--model", str(model_dir), "--clip", str(short)]) == 0
    assert "window: onset 1" in capsys.readouterr().out
    warning = [str(w.message) for w in caught if "shorter than eq. 2's 10 frames" in str(w.message)]
    assert len(warning) == 1 and str(short) in warning[0] and "key frames repeat" in warning[0]


def test_preprocessing_warnings_name_the_clip_once_per_kind(tmp_path):
    import warnings

    from mer_utils.inference import Clip, _reissue, clip_sample

    folder = tmp_path / "decoded"
    frames = tuple(folder / f"frame_{n:06d}.bmp" for n in range(4))
    clip = Clip(tmp_path / "rec.avi", frames, tuple(range(4)), is_video=True)
    sample = clip_sample(clip)
    caught = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(3):
            warnings.warn(f"clip {sample.key}: aligned frame {n} ({frames[n]}) is nearly uniform (std 0.{n})")
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        _reissue(caught, clip, sample)
    assert [str(w.message) for w in again] == [
        f"clip {clip.path}: aligned frame 0 (video frame 0) is nearly uniform (std 0.0) (and 2 more like it)"]


def test_bad_model_folders_are_refused(setup, tmp_path, capsys):
    base, model_dir, unseen = setup
    clip = str(unseen[0].frames[0].parent)
    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    card = json.loads((old / CARD_FILE).read_text())
    card["kit_version"] = "0.0.1"
    (old / CARD_FILE).write_text(json.dumps(card))
    line = error_line(capsys, ["predict", "--model", str(old), "--clip", clip])
    assert str(old) in line and "0.0.1" in line and mer_utils.__version__ in line
    partial = tmp_path / "partial"
    shutil.copytree(model_dir, partial)
    (partial / WEIGHTS_FILE).unlink()
    line = error_line(capsys, ["predict", "--model", str(partial), "--clip", clip])
    assert "incomplete" in line and WEIGHTS_FILE in line
    line = error_line(capsys, ["predict", "--model", str(model_dir), "--root", str(base / "unseen"),
                               "--protocol", "megc2019", "--out", str(tmp_path / "p.csv")])
    assert "casme2-5class" in line and "megc2019" in line and "negative" in line and "others" in line
    line = error_line(capsys, ["predict", "--model", str(model_dir), "--root", str(base / "unseen"),
                               "--protocol", "casme2-5class", "--method", "rrs", "--out", str(tmp_path / "p.csv")])
    assert "'ars' in the model" in line and "'rrs' requested" in line
    for field, value, message in (("image_size", "32", "model.image_size '32' (a whole number >= 1)"),
                                  ("cgpo", "yes", "model.cgpo 'yes' (true or false)")):
        typed = tmp_path / f"typed_{field}"
        shutil.copytree(model_dir, typed)
        card = json.loads((typed / CARD_FILE).read_text())
        card["model"][field] = value
        (typed / CARD_FILE).write_text(json.dumps(card))
        assert error_line(capsys, ["predict", "--model", str(typed), "--clip", clip]) == \
            f"error: {typed / CARD_FILE}: {message}"
    unsigned = tmp_path / "unsigned"
    shutil.copytree(model_dir, unsigned)
    card = json.loads((unsigned / CARD_FILE).read_text())
    del card["weights"]["sha256"]
    (unsigned / CARD_FILE).write_text(json.dumps(card))
    assert "lacks the field 'weights.sha256'" in error_line(capsys, ["predict", "--model", str(unsigned), "--clip", clip])
    twice = tmp_path / "twice"
    shutil.copytree(model_dir, twice)
    card = json.loads((twice / CARD_FILE).read_text())
    card["classes"][1] = card["classes"][0]
    (twice / CARD_FILE).write_text(json.dumps(card))
    assert "(at least two distinct names)" in error_line(capsys, ["predict", "--model", str(twice), "--clip", clip])
    # weights changed after the card was written: one flipped byte
    changed = tmp_path / "changed"
    shutil.copytree(model_dir, changed)
    data = bytearray((changed / WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (changed / WEIGHTS_FILE).write_bytes(bytes(data))
    assert error_line(capsys, ["predict", "--model", str(changed), "--clip", clip]) == (
        f"error: {changed / WEIGHTS_FILE} does not match the checksum in {CARD_FILE} (changed or truncated)")
    # a card that is not this kit's, one that is not JSON, and no folder at all
    foreign = tmp_path / "foreign"
    shutil.copytree(model_dir, foreign)
    (foreign / CARD_FILE).write_text(json.dumps({"model": "resnet"}))
    assert error_line(capsys, ["predict", "--model", str(foreign), "--clip", clip]) == (
        f'error: {foreign / CARD_FILE} is not a mer-residual model card (no "format": "{CARD_FORMAT}")')
    (foreign / CARD_FILE).write_text("{")
    assert error_line(capsys, ["predict", "--model", str(foreign), "--clip", clip]).startswith(
        f"error: {foreign / CARD_FILE} is not readable JSON: ")
    assert error_line(capsys, ["predict", "--model", str(tmp_path / "none"), "--clip", clip]) == (
        f"error: model folder {tmp_path / 'none'} does not exist (write one with `mer train ... --out {tmp_path / 'none'}`)")


def test_read_clip_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="neither a folder"):
        with read_clip(tmp_path / "notes.txt"):
            pass
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="holds no frame images"):
        with read_clip(empty):
            pass
    with pytest.raises(PreprocessError, match="cannot read the first frame"):
        write_video([tmp_path / "nothing.png"], tmp_path / "v.avi")


def test_apex_errors_count_only_annotated_clips():
    import pandas as pd

    from mer_utils.inference import apex_errors

    table = pd.DataFrame({"apex_spotted": [10, 20, 30], "apex_annotated": [12, float("nan"), 30],
                          "apex_middle": [15, 25, 26]})
    assert apex_errors(table) == {"clips": 2, "spotted": 1.0, "middle": 3.5}


def test_an_ensemble_model_folder_round_trips(setup, tmp_path):
    from mer_utils.inference import card_table, model_summary
    from mer_utils.models.ensemble import SeedEnsemble

    base, _, unseen = setup
    config = ExperimentConfig(root=str(base / "data"), **TINY, ensemble=2, seed=5)
    folder = train_protocol(config, tmp_path / "ensemble", max_threads=1, progress=False)
    model = load_model(folder)
    assert isinstance(model.model, SeedEnsemble) and len(model.model.members) == 2
    assert model.card["model"]["ensemble"] == 2 and len(model.card["training"]["member_epoch_losses"]) == 2
    assert "2 networks (seeds 5..6), softmax averaged" in card_table(model).loc["CropNet input", "value"]
    n = model.card["training_data"]["n_samples"]  # the reports index's line for notebook 08 names both networks
    assert model_summary(model) == (f"{n} samples, 1 epoch at 32 px, 2 networks (seeds 5..6), softmax averaged, "
                                    "batch 8, lr 0.001 (fully connected layers 0.0001), the paper's four augmentations, "
                                    "backbone from scratch, " + tables.device_text([model.card["training"]]))
    if model.card["training"]["device"] == "cpu":  # where the tests run
        assert model_summary(model).endswith(f", on the CPU (float32; {processor_name('cpu')})")
        assert model.card["training"]["processor"] == processor_name("cpu")
    assert card_table(model).loc["training", "value"].endswith(", " + tables.device_text([model.card["training"]]))
    del model.card["training"]["precision"], model.card["training"]["processor"]  # an older card: the device alone
    assert model_summary(model).endswith(", on the CPU" if model.card["training"]["device"] == "cpu" else ", on CUDA")
    assert card_table(model).loc["testing", "value"] == "BatchNorm statistics of the un-augmented training images"
    prediction = predict_clip(model, unseen[0].frames[0].parent)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    # a card that names another number of networks than its weights hold: one clear error
    card = json.loads((folder / CARD_FILE).read_text())
    card["model"]["ensemble"] = 3
    (folder / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="does not fit the model its card describes"):
        load_model(folder)


def test_outputs_never_replace_the_users_files(setup, tmp_path, capsys):
    """mer train and mer predict --out refuse a file, a folder or a user's file before any work."""
    base, model_dir, _ = setup
    mine = tmp_path / "mine.csv"
    mine.write_text("my own table\n")
    predict = ["predict", "--model", str(model_dir), "--root", str(base / "unseen"), "--protocol", "casme2-5class"]
    line = error_line(capsys, predict + ["--out", str(mine)])
    assert "exists and is not a predictions table written by the kit" in line
    assert mine.read_text() == "my own table\n"
    assert "is a folder" in error_line(capsys, predict + ["--out", str(tmp_path)])
    assert "does not exist or is not a folder" in error_line(capsys, predict + ["--out", str(mine / "p.csv")])
    train = ["train", "--root", str(base / "data"), "--protocol", "casme2-5class", "--epochs", "1"]
    assert "is a file, not a folder" in error_line(capsys, train + ["--out", str(mine)])
    line = error_line(capsys, train + ["--out", str(mine / "model")])  # before training, not after
    assert line == f"error: model folder {mine / 'model'} cannot be written: {mine} is a file; choose another --out"
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / WEIGHTS_FILE).write_bytes(b"my weights")
    assert "exists without a model card" in error_line(capsys, train + ["--out", str(stray)])
    assert (stray / WEIGHTS_FILE).read_bytes() == b"my weights"
    clip = ["predict", "--model", str(model_dir), "--clip", str(base / "unseen")]
    line = error_line(capsys, clip + ["--method", "rrs", "--out", str(tmp_path / "p.csv")])
    assert line == ("error: --method, --out apply to --root only: a --clip is read with the model's own "
                    "preprocessing and printed (--json for JSON)")
    assert not (tmp_path / "p.csv").exists()
    assert "threads must be a positive integer, got 0" in error_line(
        capsys, train + ["--out", str(tmp_path / "new"), "--threads", "0"])
