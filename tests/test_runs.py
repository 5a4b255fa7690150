"""LOSO runner: fold order, configuration records, resuming, Dask fan-out, the papermill
notebook path, the LBP-TOP baseline and failing folds, on the small synthetic CASME II set
with tiny CropNet settings (1 epoch, 32 px)."""
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import cv2
import pandas as pd
import pytest
import torch

from mer_utils.data import load_samples
from mer_utils.errors import ConfigError, DataWarning, DatasetError, MerError
from mer_utils.evaluate import read_predictions
from mer_utils.config import ExperimentConfig
from mer_utils.provenance import is_synthetic
from mer_utils.paths import PROGRESS_ENV
from mer_utils.preprocess import sample_window
from mer_utils import runs
from mer_utils.runs import (DONE_FILE, FOLD_FILE, NOTEBOOK_PATH, PREDICTIONS_FILE, PROGRESS_FILE, _epochs_done,
                            _fold_task, fold_dir_name,
                            fold_fingerprint, fold_subject, inputs_digest,
                            fold_is_complete, fold_staleness, leave_one_subject_out, run_experiment, run_fold)
from mer_utils.synth import make_synthetic
from mer_utils.train import TrainConfig

SUBJECTS = ["sub01", "sub02", "sub03", "sub04", "sub05", "sub06"]  # the small synthetic CASME II


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synthetic"
    make_synthetic(root, datasets=("casme2",), workers=2, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny(data_root):
    """A CropNet configuration small enough for CI (its cache: <tmp>/data/interim/cache)."""
    return ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="ars", epochs=1,
                            image_size=32, batch_size=8, preprocess_size=48)


@pytest.fixture(scope="module")
def scheduler():
    """An in-process Dask cluster (one worker thread) for the runs that do not test the fan-out.
    Its worker advertises one GPU slot, so folds take the ``resources={"GPU": 1}`` path; they
    still train on the CPU (device "auto")."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0",
                      resources={"GPU": 1}) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def two_fold_run(tiny, tmp_path_factory):
    """Folds 0 and 1 through a real LocalCluster of two worker processes, in-process folds."""
    out = tmp_path_factory.mktemp("runs") / "ars"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)  # "partial: 2 of 6 folds"
        result = run_experiment(tiny, out, workers=2, folds=[0, 1], use_papermill=False, progress=False)
    return result


def copy_experiment(result, tmp_path) -> Path:
    return Path(shutil.copytree(result.out_dir, tmp_path / "experiment"))


def done_times(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in sorted(out.glob(f"fold_*/{DONE_FILE}"))}


def rerun(config, out, scheduler, **kwargs):
    """Folds 0 and 1 again, in-process folds on ``scheduler`` (partial-metrics warning muted)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)
        return run_experiment(config, out, scheduler=scheduler, folds=[0, 1], use_papermill=False,
                              progress=False, **kwargs)


def test_folds_are_sorted_subjects_whatever_the_sample_order(data_root):
    samples = load_samples(data_root, "casme2-5class")
    assert leave_one_subject_out(samples) == SUBJECTS
    assert leave_one_subject_out(list(reversed(samples))) == SUBJECTS
    assert fold_dir_name(5, "sub06") == "fold_05_sub06"
    assert fold_dir_name(0, "casme2/sub01") == "fold_00_casme2_sub01"
    assert is_synthetic(data_root) and not is_synthetic(data_root.parent)


def test_a_fold_that_does_not_exist_is_named_with_the_folds_that_do(data_root, tmp_path):
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class").resolved()
    assert fold_subject(SUBJECTS, 5, config) == SUBJECTS[5]
    for bad in (len(SUBJECTS), -1, True):
        with pytest.raises(ConfigError, match=f"fold {bad} does not exist: .* \\(folds 0..{len(SUBJECTS) - 1}\\)"):
            fold_subject(SUBJECTS, bad, config)
    with pytest.raises(ConfigError, match="torch_threads must be a positive integer"):
        run_fold(config, 0, tmp_path / "fold", torch_threads=-1)
    assert not (tmp_path / "fold").exists()


def test_config_resolves_defaults_and_round_trips_through_json(data_root):
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class").resolved()
    defaults = TrainConfig()
    assert (config.epochs, config.batch_size, config.image_size, config.lr, config.fc_lr, config.backbone) == (
        defaults.epochs, defaults.batch_size, defaults.image_size, defaults.lr, defaults.fc_lr, defaults.backbone)
    assert config.replace(fc_lr=3e-5).train_config().fc_lr == 3e-5  # reaches the optimiser's FC group
    for bad in (0, -1e-4, "fast", float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="fc_lr must be a positive finite number"):
            config.replace(fc_lr=bad).resolved()
    with pytest.raises(ConfigError, match="lr must be a positive finite number, got inf"):
        config.replace(lr=float("inf")).resolved()
    for bad in (-1, 2 ** 32, 1.5):  # numpy's seeds: 0 .. 2**32 - 1
        with pytest.raises(ConfigError, match="seed must be an integer from 0 to 2\\*\\*32 - 1"):
            config.replace(seed=bad).resolved()
    # the kit's test-time BatchNorm recalibration is on by default and can be switched off (the paper's way)
    assert config.recalibrate_bn is True and config.train_config().recalibrate_bn is True
    assert config.replace(recalibrate_bn=False).resolved().train_config().recalibrate_bn is False
    with pytest.raises(ConfigError, match="recalibrate_bn must be True or False"):
        config.replace(recalibrate_bn="yes").resolved()
    # the paper's four augmentations by default; a profile may choose its flip and rotation only
    assert config.augmentation == "paper" and config.train_config().augmentation == "paper"
    assert config.replace(augmentation="geometric").resolved().train_config().augmentation == "geometric"
    with pytest.raises(ConfigError, match="augmentation must be one of paper, geometric, none, got 'colour'"):
        config.replace(augmentation="colour").resolved()
    # one network per fold by default, as the paper; an ensemble is a setting like any other
    assert config.ensemble == 1 and config.replace(ensemble=3).resolved().train_config().ensemble == 3
    with pytest.raises(ConfigError, match="ensemble must be a positive integer, got 0"):
        config.replace(ensemble=0).resolved()
    assert (config.seed, config.n_key, config.face_crop, config.preprocess_size) == (0, 5, "dlib", 320)
    assert Path(config.cache_dir) == data_root.parent / "interim" / "cache"
    assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    baseline = ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop", epochs=5).resolved()
    assert baseline.epochs is None and baseline.n_key is None and baseline.lbptop_frames == 10
    with pytest.raises(ConfigError, match="svm"):
        ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="svm").resolved()
    with pytest.raises(ConfigError, match="momentum"):
        ExperimentConfig.from_dict({**config.to_dict(), "momentum": 0.9})


@pytest.mark.slow
def test_local_cluster_runs_two_folds_and_scores_them(two_fold_run, data_root):
    result, out = two_fold_run, two_fold_run.out_dir
    assert result.failures == {} and result.trained_folds == 2
    assert sorted(p.name for p in out.iterdir()) == [
        ".mer-lock", "config.json", "confusion.png", "fold_00_sub01", "fold_01_sub02", "losses.csv", "metrics.json",
        "predictions.csv"]
    assert result.summary_line().startswith(f"2/6 folds, 2 trained now, UF1 {result.metrics['uf1']:.4f}, UAR ")
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["config"] == result.config.to_dict() and recorded["kit_version"]
    assert recorded["train"]["label_smoothing"] == TrainConfig().label_smoothing
    samples = [s for s in load_samples(data_root, "casme2-5class") if s.subject_id in SUBJECTS[:2]]
    table = read_predictions(out / PREDICTIONS_FILE)
    assert list(table["subject"].unique()) == ["sub01", "sub02"]  # fold order
    assert sorted(table["clip"]) == sorted(s.clip for s in samples)
    assert [c for c in table.columns if c.startswith("prob_")] == [
        "prob_others", "prob_disgust", "prob_happiness", "prob_repression", "prob_surprise"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "uf1", "uar", "confusion", "classes"} <= set(metrics)
    assert metrics["folds"] == {"completed": 2, "total": 6, "missing_subjects": SUBJECTS[2:]}
    assert sum(map(sum, metrics["confusion"])) == len(samples)
    done = json.loads((out / "fold_01_sub02" / DONE_FILE).read_text())
    assert done["subject"] == "sub02" and done["n_train"] == len(load_samples(data_root, "casme2-5class")) - 7
    assert done["device"] == "cpu" and done["pretrained"] is False and len(done["epoch_losses"]) == 1
    # where the fold's time went, and how it ran: float32 on the CPU, no loader processes, no GPU memory
    assert done["precision"] == "float32" and done["loader_workers"] == 0 and done["gpu_peak_memory_mib"] is None
    assert done["channels_last"] is True
    assert set(done["seconds"]) == {"load", "epochs", "recalibrate", "predict"} and len(done["seconds"]["epochs"]) == 1
    assert sum(done["seconds"]["epochs"]) + done["seconds"]["load"] <= done["wall_time_s"]
    # losses.csv, which the notebooks' loss figures draw: the mean over the folds of each epoch's loss
    folds = [json.loads((out / name / FOLD_FILE).read_text())["epoch_losses"] for name in ("fold_00_sub01", "fold_01_sub02")]
    losses = pd.read_csv(out / "losses.csv")
    assert list(losses.columns) == ["epoch", "mean_loss"] and list(losses["epoch"]) == [1]
    assert losses["mean_loss"].tolist() == pytest.approx([(folds[0][0] + folds[1][0]) / 2], abs=1e-6)
    assert result.epoch_losses == pytest.approx(losses["mean_loss"].tolist(), abs=1e-6)


def test_a_local_cluster_runs_one_fold_at_a_time_on_a_cuda_machine(monkeypatch):
    from mer_utils.runs import default_local_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_local_workers(26) == 1  # each fold takes the whole GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_local_workers(26) == min(os.cpu_count() or 1, 26) and default_local_workers(1) == 1


@pytest.mark.slow
def test_complete_rerun_trains_nothing(two_fold_run, tiny, tmp_path, scheduler, monkeypatch):
    out = copy_experiment(two_fold_run, tmp_path)
    before = done_times(out)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", scheduler)  # another scheduler: not part of the config
    result = rerun(tiny, out, None)
    assert result.trained_folds == 0 and result.failures == {}
    assert done_times(out) == before
    assert result.metrics["uf1"] == two_fold_run.metrics["uf1"]


@pytest.mark.slow
def test_deleted_predictions_rerun_only_that_fold(two_fold_run, tiny, tmp_path, scheduler):
    out = copy_experiment(two_fold_run, tmp_path)
    before = done_times(out)
    (out / "fold_01_sub02" / PREDICTIONS_FILE).unlink()
    with pytest.warns(UserWarning, match=r"fold 1 \(sub02\) is stale: its results are incomplete or unreadable "
                                         r"\(.*predictions.csv: predictions file not found\); running it again"):
        result = rerun(tiny, out, scheduler)
    after = done_times(out)
    assert result.trained_folds == 1 and result.failures == {}
    assert after["fold_00_sub01"] == before["fold_00_sub01"]
    assert after["fold_01_sub02"] != before["fold_01_sub02"]
    assert len(read_predictions(out / PREDICTIONS_FILE)) == len(read_predictions(
        two_fold_run.out_dir / PREDICTIONS_FILE))


@pytest.mark.slow
def test_truncated_predictions_rerun_that_fold(two_fold_run, tiny, tmp_path, scheduler):
    out = copy_experiment(two_fold_run, tmp_path)
    before = done_times(out)
    predictions = out / "fold_00_sub01" / PREDICTIONS_FILE
    predictions.write_bytes(predictions.read_bytes()[: predictions.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"fold 0 \(sub01\) is stale: its results are incomplete or unreadable"):
        result = rerun(tiny, out, scheduler)
    assert result.trained_folds == 1
    assert done_times(out)["fold_00_sub01"] != before["fold_00_sub01"]
    assert done_times(out)["fold_01_sub02"] == before["fold_01_sub02"]
    assert len(read_predictions(predictions)) == 6


@pytest.mark.slow
def test_a_damaged_fold_record_reruns_that_fold(two_fold_run, tiny, tmp_path, scheduler):
    out = copy_experiment(two_fold_run, tmp_path)
    before = done_times(out)
    (out / "fold_00_sub01" / FOLD_FILE).write_text("{")
    with pytest.warns(UserWarning, match=r"fold 0 \(sub01\) is stale: .*fold record .*fold.json is unreadable"):
        result = rerun(tiny, out, scheduler)
    assert result.trained_folds == 1 and done_times(out)["fold_01_sub02"] == before["fold_01_sub02"]
    assert json.loads((out / "fold_00_sub01" / FOLD_FILE).read_text())["epoch_losses"]


def test_a_fold_records_the_content_of_the_frames_it_read(two_fold_run, tiny, data_root, tmp_path):
    """A frame file replaced after a fold ran (same annotations) makes the fold stale."""
    samples = load_samples(data_root, "casme2-5class")
    done = json.loads((two_fold_run.out_dir / "fold_00_sub01" / DONE_FILE).read_text())
    assert done["fingerprint"]["inputs"] == inputs_digest(samples, tiny)
    root = Path(shutil.copytree(data_root, tmp_path / "copy"))
    copied = load_samples(root, "casme2-5class")
    config = tiny.replace(root=str(root))
    assert inputs_digest(copied, config) == inputs_digest(samples, tiny)  # a copy is the same data
    fold = Path(shutil.copytree(two_fold_run.out_dir / "fold_00_sub01", tmp_path / "fold"))
    test = [x for x in copied if x.subject_id == "sub01"]
    printed = {**fold_fingerprint(copied, "sub01"), "inputs": inputs_digest(copied, config)}
    assert fold_staleness(fold, test, printed) is None
    training = next(x for x in copied if x.subject_id == "sub02")
    start, keys = sample_window(training, config.resolved().n_key)
    frame = training.frame_path(keys[-1])
    image = cv2.imread(str(frame))
    cv2.imwrite(str(frame), image[:, ::-1])  # the annotations do not change
    printed = {**fold_fingerprint(copied, "sub01"), "inputs": inputs_digest(copied, config)}
    assert fold_staleness(fold, test, printed).startswith("the frames it read changed since it ran")
    older = {k: v for k, v in done["fingerprint"].items() if k != "inputs"}  # a fold of an older kit
    (fold / DONE_FILE).write_text(json.dumps({**done, "fingerprint": older}))
    assert fold_staleness(fold, test, printed) is None


@pytest.mark.slow
def test_fold_without_done_marker_is_not_complete(two_fold_run, data_root, tmp_path):
    out = copy_experiment(two_fold_run, tmp_path)
    test = [s for s in load_samples(data_root, "casme2-5class") if s.subject_id == "sub01"]
    assert fold_is_complete(out / "fold_00_sub01", test)
    assert not fold_is_complete(out / "fold_00_sub01", test[:-1])  # a sample missing from the file
    (out / "fold_00_sub01" / DONE_FILE).unlink()  # killed after the predictions, before the marker
    assert not fold_is_complete(out / "fold_00_sub01", test)


@pytest.mark.slow
def test_other_configuration_in_the_same_folder_is_refused(two_fold_run, tiny, tmp_path, scheduler):
    out = copy_experiment(two_fold_run, tmp_path)
    changed = ExperimentConfig(**{**tiny.to_dict(), "epochs": 2, "seed": 1})
    with pytest.raises(ConfigError, match=r"differing: epochs: \d+ there, 2 now; seed: 0 there, 1 now\); use another"):
        rerun(changed, out, scheduler)
    with pytest.raises(ConfigError, match=r"differing: method: 'ars' there, 'lbptop' now; .*; and \d+ more: \w+"):
        rerun(ExperimentConfig(root=tiny.root, protocol=tiny.protocol, method="lbptop"), out, scheduler)
    moved_cache = ExperimentConfig(**{**tiny.to_dict(), "cache_dir": str(tmp_path / "elsewhere")})
    assert rerun(moved_cache, out, scheduler).trained_folds == 0  # where the cache lives changes no result
    recorded = json.loads((out / "config.json").read_text())
    recorded["train"]["label_smoothing"] = 0.2  # as if run under another TrainConfig default
    (out / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(ConfigError, match=r"differing: train\.label_smoothing"):
        rerun(tiny, out, scheduler)


@pytest.mark.slow
def test_papermill_runs_the_notebook_for_one_fold(tiny, tmp_path, scheduler):
    assert NOTEBOOK_PATH.is_file()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)
        result = run_experiment(tiny, tmp_path / "pm", scheduler=scheduler, folds=[2], progress=False)
    fold = result.fold_dirs[2]
    assert result.failures == {} and result.trained_folds == 1 and fold.name == "fold_02_sub03"
    notebook = json.loads((fold / "03_train.ipynb").read_text())
    assert notebook["metadata"]["papermill"]["parameters"]["fold"] == 2
    outputs = [o for cell in notebook["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the loss curve
    assert (fold / "loss_curve.png").is_file()
    assert json.loads((fold / DONE_FILE).read_text())["notebook"] == "03_train.ipynb"
    assert set(read_predictions(fold / PREDICTIONS_FILE)["subject"]) == {"sub03"}
    assert not (fold / "kernel.log").exists()  # its kernel wrote no error output: no empty log left
    notes = json.loads((fold / "summary.json").read_text())["notes"]  # the fold accuracy's chance level beside it
    assert notes[0].startswith("CropNet trained from scratch (no ImageNet weights), 1 training epoch, one network (seed 0), lr ")
    assert notes[1].startswith("chance accuracy on this subject's clips 0.2000")
    printed = "".join("".join(o.get("text", "")) for o in outputs)  # the report itself states them, not only the index
    assert "fold accuracy " in printed and notes[0] in printed and notes[1] in printed


@pytest.mark.slow
def test_lbptop_baseline_on_two_folds(data_root, tmp_path, scheduler):
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)
        result = run_experiment(config, tmp_path / "lbptop", scheduler=scheduler, folds=[0, 1],
                                use_papermill=False, progress=False)
    assert result.failures == {} and result.trained_folds == 2
    assert result.metrics["folds"]["completed"] == 2
    features = list(Path(result.config.cache_dir, "lbptop").rglob("*.npy"))
    assert len(features) == len(load_samples(data_root, "casme2-5class"))
    done = json.loads((result.fold_dirs[0] / DONE_FILE).read_text())
    assert done["method"] == "lbptop" and done["epoch_losses"] == []


@pytest.mark.slow
def test_the_runner_writes_a_progress_line_per_finished_fold_where_asked(data_root, tmp_path, scheduler, monkeypatch):
    """``mer reproduce`` shows these on its console (``reproduce.fold_progress``)."""
    progress = tmp_path / "progress.txt"
    monkeypatch.setenv(PROGRESS_ENV, str(progress))
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)
        run_experiment(config, tmp_path / "lbptop", scheduler=scheduler, folds=[0, 2], use_papermill=False,
                       progress=False)
    lines = progress.read_text().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["lbptop: 1 of 2 folds done", "lbptop: 2 of 2 folds done"]
    assert sorted(line.split(" (")[1] for line in lines) == ["fold 0, sub01)", "fold 2, sub03)"]


@pytest.mark.slow
def test_the_bar_counts_every_folds_epochs_as_they_train(tiny, tmp_path, scheduler, capsys, monkeypatch):
    """A long fold shows its progress: each CropNet fold writes its epochs so far to
    PROGRESS_FILE after every epoch (removed when it ends), and the runner's bar counts them."""
    written = []
    real = runs._write_json_atomic

    def spy(path, data):
        if Path(path).name == PROGRESS_FILE:
            written.append((Path(path).parent.name, data["epochs_done"], data["epochs"]))
        real(path, data)

    monkeypatch.setattr(runs, "_write_json_atomic", spy)
    monkeypatch.setattr(runs, "PROGRESS_POLL_S", 0.05)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)  # "partial: 2 of 6 folds"
        result = run_experiment(tiny.replace(epochs=2), tmp_path / "bar", scheduler=scheduler, folds=[0, 1],
                                use_papermill=False, progress=True)
    assert sorted(written) == [("fold_00_sub01", 1, 2), ("fold_00_sub01", 2, 2),
                               ("fold_01_sub02", 1, 2), ("fold_01_sub02", 2, 2)]
    assert not list(result.out_dir.glob(f"fold_*/{PROGRESS_FILE}"))
    err = capsys.readouterr().err
    assert "LOSO, 2 folds" in err and "4/4" in err and "epoch" in err and "2/2 folds done" in err


@pytest.mark.slow
def test_progress_lines_name_the_running_folds_epochs_after_a_quiet_spell(tiny, tmp_path, scheduler, monkeypatch):
    """``mer reproduce`` shows these too: a fold at the paper's settings on a CPU runs for long."""
    progress = tmp_path / "progress.txt"
    monkeypatch.setenv(PROGRESS_ENV, str(progress))
    monkeypatch.setattr(runs, "PROGRESS_POLL_S", 0.01)
    monkeypatch.setattr(runs, "PROGRESS_LINE_S", 0.0)
    monkeypatch.setattr(runs, "_epochs_done", lambda fold_dir, since=0.0: 1)  # every running fold is in its first epoch
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)
        run_experiment(tiny.replace(epochs=3), tmp_path / "lines", scheduler=scheduler, folds=[0, 1],
                       use_papermill=False, progress=False)
    lines = progress.read_text().splitlines()
    assert [line.split(" (")[0] for line in lines if "folds done (" in line] == [
        "lines: 1 of 2 folds done", "lines: 2 of 2 folds done"]
    training = [line for line in lines if "; training" in line]
    assert training[0] == "lines: 0 of 2 folds done; training fold 0 epoch 1/3, fold 1 epoch 1/3"
    assert len(set(training)) == len(training)  # a line only when the epochs change


@pytest.mark.slow
def test_a_fold_whose_run_ended_stops_without_writing_results(tiny, tmp_path, monkeypatch):
    """Ctrl-C or a lost scheduler ends a run while its folds still train on a Dask cluster:
    each stops at its next epoch (or before done.json) when the run's token in the folder's
    lock file is gone, rather than writing into a folder another run may hold by then."""
    from mer_utils import train as train_module
    from mer_utils.runs import LOCK_FILE, RunEnded

    out = tmp_path / "exp"
    out.mkdir()
    (out / LOCK_FILE).write_text("1234-5678")  # the run that starts the fold
    real = train_module.train_fold

    def run_ends_in_epoch_one(samples, subject, config, images, on_epoch=None):
        def ending(done, loss):
            (out / LOCK_FILE).write_text("")  # the run ended (runs._end_run)
            on_epoch(done, loss)
        return real(samples, subject, config, images, ending)

    monkeypatch.setattr(train_module, "train_fold", run_ends_in_epoch_one)
    fold = out / fold_dir_name(0, "sub01")
    with pytest.raises(RunEnded, match="the run that started this fold has ended .* without writing results"):
        run_fold(tiny.replace(epochs=2), 0, fold)
    assert sorted(p.name for p in fold.iterdir()) == []  # no fold.json, no progress.json
    monkeypatch.setattr(train_module, "train_fold", real)
    (out / LOCK_FILE).write_text("1234-5678")
    ran = runs.run_fold

    def another_run_takes_the_folder(*args, **kwargs):
        record = ran(*args, **kwargs)
        (out / LOCK_FILE).write_text("9999-0000")  # a new run holds the folder once this fold is trained
        return record

    monkeypatch.setattr(runs, "run_fold", another_run_takes_the_folder)
    outcome = _fold_task(tiny.to_dict(), 0, str(fold), False, 1)
    assert outcome["error"].startswith("RunEnded: ") and not (fold / DONE_FILE).exists()


def test_an_interrupted_run_keeps_its_config_and_ends_its_token(data_root, tmp_path, monkeypatch):
    """Folds sent to a cluster may finish after Ctrl-C: config.json stays (the same command
    then goes on from them), and the lock file no longer holds the run's token."""
    from mer_utils.runs import CONFIG_FILE, LOCK_FILE

    def interrupted(*args, **kwargs):
        assert (out / LOCK_FILE).read_text()  # the run's token while it runs
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "prepare_inputs", lambda *a, **k: None)
    monkeypatch.setattr(runs, "_run_folds", interrupted)
    out = tmp_path / "exp"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop"), out,
                       folds=[0], use_papermill=False, progress=False)
    assert (out / CONFIG_FILE).is_file() and (out / LOCK_FILE).read_text() == ""


@pytest.mark.slow
def test_folds_waiting_for_a_worker_say_so_once(data_root, tmp_path, monkeypatch):
    """A scheduler without workers: the run waits for one and says why, once, rather than
    showing a bar that never moves."""
    from distributed import LocalCluster

    monkeypatch.setattr(runs, "NO_WORKER_WAIT_S", 0.2)
    monkeypatch.setattr(runs, "IDLE_CHECK_S", 0.05)
    monkeypatch.setattr(runs, "PROGRESS_POLL_S", 0.05)
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop")
    said = []
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        def progress_line(line):  # once the run has said it waits, a worker joins and the fold runs
            said.append(line)
            if "waiting" in line:
                cluster.scale(1)

        monkeypatch.setattr(runs, "_report_progress", progress_line)
        with pytest.warns(UserWarning, match=r"idle: 1 fold\(s\) waiting 0 s: no Dask worker is connected to "
                                             r"its scheduler \(.*\); start one there, or Ctrl-C"):
            warnings.filterwarnings("ignore", ".*metrics are partial", UserWarning)
            result = run_experiment(config, tmp_path / "idle", scheduler=cluster.scheduler_address, folds=[0],
                                    use_papermill=False, progress=False)
    assert result.metrics["folds"]["completed"] == 1
    assert [line.split(":")[1].strip() for line in said] == ["1 fold(s) waiting 0 s", "1 of 1 folds done (fold 0, sub01)"]


def test_a_missing_or_unreadable_progress_file_counts_no_epoch(tmp_path):
    assert _epochs_done(tmp_path) == 0
    for text, expected in [("{", 0), ("[1]", 0), ('{"epochs_done": true}', 0), ('{"epochs_done": 3, "epochs": 5}', 3)]:
        (tmp_path / PROGRESS_FILE).write_text(text)
        assert _epochs_done(tmp_path) == expected


@pytest.mark.slow
def test_failing_fold_is_reported_by_subject_and_the_other_finishes(data_root, tmp_path, scheduler):
    out = tmp_path / "failing"
    blocker = out / "fold_01_sub02" / PREDICTIONS_FILE  # a folder where the fold must write a file
    blocker.mkdir(parents=True)
    (blocker / "keep").write_text("x")
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop")
    with pytest.warns(UserWarning, match="partial: 1 of 6 folds"):
        result = run_experiment(config, out, scheduler=scheduler, folds=[0, 1], use_papermill=True,
                                progress=False)
    assert list(result.failures) == ["sub02"]
    assert result.failures["sub02"].startswith(("IsADirectoryError", "OSError"))
    assert result.metrics["folds"]["completed"] == 1
    assert (out / "fold_00_sub01" / DONE_FILE).is_file() and not (out / "fold_01_sub02" / DONE_FILE).exists()
    assert set(pd.read_csv(out / PREDICTIONS_FILE)["subject"]) == {"sub01"}


# --------------------------------------------------------------------------- issue 10


def relabel(root: Path, subject: int, label: str) -> str:
    """Give the first CASME II sheet row of ``subject`` another emotion; returns its clip."""
    import openpyxl

    sheet_path = next((root / "CASME2").glob("CASME2-coding-*.xlsx"))
    workbook = openpyxl.load_workbook(sheet_path)
    sheet = workbook.worksheets[0]
    header = [str(c.value or "").strip() for c in sheet[1]]
    column = {name: header.index(name) for name in ("Subject", "Filename", "Estimated Emotion")}
    for row in sheet.iter_rows(min_row=2):
        if str(row[column["Subject"]].value).strip().lstrip("sub").lstrip("0") == str(subject):
            if str(row[column["Estimated Emotion"]].value).strip().lower() != label:
                row[column["Estimated Emotion"]].value = label
                workbook.save(sheet_path)
                return str(row[column["Filename"]].value).strip()
    raise AssertionError(f"no row of subject {subject} to relabel")


@pytest.mark.slow
def test_changed_annotations_make_the_folds_that_used_them_stale(tiny, data_root, tmp_path, scheduler):
    root = Path(shutil.copytree(data_root, tmp_path / "data" / "synthetic"))  # mtimes kept: the cache still hits
    config = ExperimentConfig(**{**tiny.to_dict(), "root": str(root),
                                 "cache_dir": str(data_root.parent / "interim" / "cache")})
    out = tmp_path / "experiment"
    first = rerun(config, out, scheduler)
    assert first.trained_folds == 2
    done = json.loads((out / "fold_01_sub02" / DONE_FILE).read_text())
    assert set(done["fingerprint"]) == {"test", "train", "inputs"}

    clip = relabel(root, 2, "surprise")  # a test sample of fold 1, a training sample of fold 0
    with pytest.warns(UserWarning) as caught:
        second = run_experiment(config, out, scheduler=scheduler, folds=[0, 1], use_papermill=False, progress=False)
    messages = [str(w.message) for w in caught]
    assert any("fold 0 (sub01) is stale: its training samples changed since it ran" in m and "running it again" in m
               for m in messages), messages
    assert any("fold 1 (sub02) is stale: its test samples changed since it ran" in m for m in messages), messages
    assert second.trained_folds == 2 and second.failures == {}
    table = read_predictions(out / PREDICTIONS_FILE)
    assert table.loc[table["clip"] == clip, "true_label"].tolist() == ["surprise"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_class"]["surprise"]["n"] == int((table["true_label"] == "surprise").sum())

    relabel(root, 1, "others")  # now fold 1 is stale, but only fold 0 is asked for
    with pytest.warns(UserWarning) as caught:
        third = run_experiment(config, out, scheduler=scheduler, folds=[0], use_papermill=False, progress=False)
    assert any("fold 1 (sub02) is stale: its training samples changed" in str(w.message)
               and "left out of the metrics" in str(w.message) for w in caught)
    assert third.trained_folds == 1 and third.metrics["folds"]["completed"] == 1
    assert "sub02" in third.metrics["folds"]["missing_subjects"]


@pytest.mark.slow
def test_a_data_warning_is_shown_by_the_experiment_not_again_by_every_fold(data_root, tmp_path):
    """A fold loads the experiment's samples again; the warnings of that load (here a clip left
    out for an emotion no dataset uses) came once per fold from every worker, on the console."""
    root = Path(shutil.copytree(data_root, tmp_path / "data" / "synthetic"))
    clip = relabel(root, 3, "happyness")
    config = ExperimentConfig(root=str(root), protocol="casme2-5class", method="lbptop",
                              cache_dir=str(data_root.parent / "interim" / "cache"))
    with pytest.warns(DataWarning, match=f"1 clip\\(s\\) left out: .*{clip}"):
        load_samples(root, "casme2-5class")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = _fold_task(config.to_dict(), 0, str(tmp_path / "fold"), False, 1)
    assert outcome["error"] is None and outcome["record"]["n_test"] > 0
    assert [str(w.message) for w in caught if issubclass(w.category, DataWarning)] == []
    assert not any(issubclass(f[2], DataWarning) for f in warnings.filters if f[0] == "ignore")  # restored


def test_fold_without_a_fingerprint_is_stale(data_root, tmp_path):
    samples = load_samples(data_root, "casme2-5class")
    test = [s for s in samples if s.subject_id == "sub01"]
    fold = tmp_path / "fold_00_sub01"
    fold.mkdir()
    pd.DataFrame({"dataset": "casme2", "subject": "sub01", "clip": [s.clip for s in test],
                  "true_label": [s.label for s in test], "pred_label": [s.label for s in test]}
                 ).to_csv(fold / PREDICTIONS_FILE, index=False)
    (fold / DONE_FILE).write_text(json.dumps({"fold": 0}))  # as an older kit wrote it
    assert fold_is_complete(fold, test)  # predictions cover the fold
    assert not fold_is_complete(fold, test, fold_fingerprint(samples, "sub01"))
    assert "records no fingerprint" in fold_staleness(fold, test, fold_fingerprint(samples, "sub01"))
    (fold / DONE_FILE).write_text(json.dumps({"fold": 0, "fingerprint": fold_fingerprint(samples, "sub01")}))
    assert fold_staleness(fold, test, fold_fingerprint(samples, "sub01")) is None
    moved = [s.replace(offset=s.offset + 1) if s.clip == test[0].clip else s for s in samples]
    assert fold_staleness(fold, test, fold_fingerprint(moved, "sub01")).startswith("its test samples changed")
    other = [s for s in samples if s.subject_id != "sub02"]  # a training subject dropped out
    assert fold_staleness(fold, test, fold_fingerprint(other, "sub01")).startswith("its training samples changed")


def test_config_is_written_only_after_the_inputs_load(data_root, tmp_path, monkeypatch):
    out = tmp_path / "experiment"
    empty_root = tmp_path / "no-datasets"
    empty_root.mkdir()
    config = ExperimentConfig(root=str(empty_root), protocol="casme2-5class", method="lbptop")
    with pytest.raises(DatasetError, match="CASME2/ is missing"):
        run_experiment(config, out, use_papermill=False, progress=False)
    assert not out.exists()  # nothing written: the corrected command is not refused
    monkeypatch.setattr("mer_utils.runs.prepare_inputs", lambda *a, **k: None)
    recorded = []  # config.json while the folds run: written once the inputs load
    monkeypatch.setattr("mer_utils.runs._run_folds",
                        lambda *a, **k: recorded.append(json.loads((out / "config.json").read_text())) or {})
    fixed = ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop")
    with pytest.raises(MerError, match="no fold is complete"):  # folds stubbed out: nothing ran
        run_experiment(fixed, out, use_papermill=False, progress=False)
    assert recorded[0]["config"]["root"] == str(data_root.resolve())
    assert not out.exists()  # no fold finished: the run claimed nothing a corrected command would hit


def test_a_folder_of_the_users_files_or_a_file_is_not_taken_for_an_experiment(data_root, tmp_path):
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / PREDICTIONS_FILE).write_text("my own table\n")
    with pytest.raises(ConfigError, match="holds files but no experiment of this kit"):
        run_experiment(config, mine, folds=[0], use_papermill=False, progress=False)
    assert (mine / PREDICTIONS_FILE).read_text() == "my own table\n" and not (mine / "config.json").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run_experiment(config, afile, folds=[0], use_papermill=False, progress=False)
    with pytest.raises(ConfigError, match="image_size must be an even number >= 4 with CGPO"):  # before any folder is claimed
        run_experiment(ExperimentConfig(root=str(data_root), protocol="casme2-5class", image_size=33),
                       tmp_path / "odd", folds=[0], use_papermill=False, progress=False)
    assert not (tmp_path / "odd" / "config.json").exists()
    with pytest.raises(ConfigError, match=r"image_size must be an even number >= 4 with CGPO .*, got 2"):
        run_experiment(ExperimentConfig(root=str(data_root), protocol="casme2-5class", image_size=2),
                       tmp_path / "tiny", folds=[0], use_papermill=False, progress=False)
    assert not (tmp_path / "tiny" / "config.json").exists()
    with pytest.raises(ConfigError, match="preprocess_size must be an integer >= 8"):
        ExperimentConfig(root=str(data_root), protocol="casme2-5class", preprocess_size=0).resolved()


def test_unknown_backbone_and_a_foreign_config_json_are_refused_before_any_fold(data_root, tmp_path):
    """A misspelt backbone is named (with timm's closest names) when the configuration
    resolves, before config.json is written, so the corrected run is not refused as "another
    configuration"; a config.json that is not the kit's (a JSON list) says so."""
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class", backbone="rexnet_10")
    with pytest.raises(ConfigError, match=r"unknown backbone 'rexnet_10': not a timm model; did you mean .*rexnet_100"):
        run_experiment(config, tmp_path / "typo", folds=[0], use_papermill=False, progress=False)
    assert not (tmp_path / "typo").exists()
    for text in ("[1, 2]", '{"config": 3}'):
        folder = tmp_path / "foreign"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(text)
        with pytest.raises(ConfigError, match=r"config.json is not a config.json of this kit \(no experiment "
                                              r"configuration in it\); use another folder"):
            run_experiment(ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop"),
                           folder, folds=[0], use_papermill=False, progress=False)
        assert (folder / "config.json").read_text() == text


def test_imagenet_weights_that_cannot_be_had_stop_the_run_before_any_preprocessing(data_root, tmp_path, offline_hub):
    """Offline and without a cached copy: one line before the images are computed and before
    any fold, rather than the same error in every fold. No test needs the network."""
    cache = tmp_path / "cache"
    config = ExperimentConfig(root=str(data_root), protocol="casme2-5class", pretrained_weights="imagenet",
                              cache_dir=str(cache))
    with pytest.raises(ConfigError, match=r"ImageNet weights for rexnet_100 .*'none' to train from scratch"):
        run_experiment(config, tmp_path / "imagenet", folds=[0], use_papermill=False, progress=False)
    assert not cache.exists() and not (tmp_path / "imagenet").exists()


def test_an_unreachable_scheduler_is_named_before_any_work(data_root, tmp_path, monkeypatch):
    """It was found after the preprocessing, with the experiment folder already claimed."""
    from mer_utils import runs

    monkeypatch.setattr(runs, "SCHEDULER_TIMEOUT_S", 1)
    out = tmp_path / "remote"
    with pytest.raises(ConfigError, match=r"^Dask scheduler tcp://127\.0\.0\.1:1 cannot be reached \(.*\): start it "
                                          r"there, or leave the scheduler out for a local cluster$"):
        run_experiment(ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop"), out,
                       scheduler="tcp://127.0.0.1:1", folds=[0], use_papermill=False, progress=False)
    assert not out.exists()
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:2")  # README: the same as --scheduler
    with pytest.raises(ConfigError, match=r"^Dask scheduler tcp://127\.0\.0\.1:2 \(from \$DASK_SCHEDULER_ADDRESS\) "
                                          r"cannot be reached \(.*\): start it there, or unset DASK_SCHEDULER_ADDRESS"):
        run_experiment(ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop"), out,
                       folds=[0], use_papermill=False, progress=False)
    assert not out.exists()
    monkeypatch.setenv("MER_LENT_SCHEDULER", "tcp://127.0.0.1:2")  # mer reproduce lent it: it names itself
    with pytest.raises(ConfigError, match=r"^Dask scheduler tcp://127\.0\.0\.1:2 \(the local cluster `mer reproduce` "
                                          r"started for its notebooks\) cannot be reached \(.*\): it stopped during the run; "
                                          r"run the same `mer reproduce` again \(finished folds are kept\)$"):
        run_experiment(ExperimentConfig(root=str(data_root), protocol="casme2-5class", method="lbptop"), out,
                       folds=[0], use_papermill=False, progress=False)
    assert not out.exists()


@pytest.mark.skipif(os.name != "posix", reason="the lock is flock, which Windows lacks (nothing is locked there)")
def test_a_killed_runs_lock_is_released_with_its_process(tmp_path):
    """README: the lock is released when its process ends, killed or not: a run killed with
    SIGKILL (no clean-up of its own) does not keep the folder from the next run."""
    import signal
    import subprocess
    import sys

    from mer_utils.runs import _lock_experiment_dir

    out = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from mer_utils.runs import _lock_experiment_dir; "
                               f"held = _lock_experiment_dir(Path({str(out)!r})); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="is in use by another run of this experiment"):
            _lock_experiment_dir(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    _lock_experiment_dir(out).close()  # taken at once: the killed process's lock went with it


def test_a_second_run_of_the_same_folder_at_once_is_refused_and_a_failed_start_leaves_nothing(tiny, tmp_path, scheduler):
    """Two runs of one experiment folder at the same time would train every fold twice and
    could score each other's half-written folds: the second is refused in one line while the
    first holds the folder's lock (released when its process ends, killed or not). A start
    that fails before any fold (here a cache folder that is a file) leaves no config.json, so
    a corrected retry is not refused as "another configuration"."""
    from mer_utils.runs import LOCK_FILE, _lock_experiment_dir

    out = tmp_path / "exp"
    held = _lock_experiment_dir(out)
    try:
        with pytest.raises(ConfigError, match=rf"{out} is in use by another run of this experiment"):
            run_experiment(tiny, out, scheduler=scheduler, folds=[0], progress=False)
    finally:
        held.close()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # the refused run wrote nothing

    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError, match="cache folder .*a-file/cache is a file|cannot write to the cache folder"):
        run_experiment(tiny.replace(cache_dir=str(blocker / "cache")), fresh, scheduler=scheduler, folds=[0],
                       progress=False)
    assert not fresh.exists() and blocker.read_text() == "mine"


def test_a_dask_worker_with_other_kit_code_is_named_before_any_fold(scheduler):
    """A worker that runs another version or source of the kit, or cannot import it, would
    compute folds with other code: check_scheduler names it, with both identities."""
    from mer_utils.provenance import kit_identity
    from mer_utils.runs import check_scheduler, check_workers_kit

    mine = kit_identity()
    assert re.fullmatch(r"\d+\.\d+\.\d+ \(source [0-9a-f]{12}\)", mine)
    check_scheduler(scheduler)  # the fixture's worker shares this process's kit
    check_workers_kit({"tcp://a:1": mine, "tcp://b:2": mine}, "tcp://s:8786")
    with pytest.raises(ConfigError, match=re.escape(
            "Dask worker tcp://b:2 of scheduler tcp://s:8786 runs mer-residual 0.0.9 (source 000000000000), but this "
            f"run is mer-residual {mine}: install this kit on every worker")):
        check_workers_kit({"tcp://a:1": mine, "tcp://b:2": "0.0.9 (source 000000000000)"}, "tcp://s:8786")
    with pytest.raises(ConfigError, match=re.escape(
            "Dask worker tcp://a:1 of scheduler tcp://s:8786 cannot run this kit (ModuleNotFoundError: No module "
            "named 'mer_utils') (and 1 more of its 2 workers)")):
        check_workers_kit({"tcp://a:1": ModuleNotFoundError("No module named 'mer_utils'"), "tcp://b:2": "other"},
                          "tcp://s:8786")


def test_a_worker_that_joined_with_other_kit_code_refuses_the_fold(tiny, tmp_path, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("the fold ran on other code")

    monkeypatch.setattr(runs, "run_fold", must_not_run)
    outcome = _fold_task(tiny.to_dict(), 0, str(tmp_path / "fold"), False, 1, None, "0.0.9 (source 000000000000)")
    assert outcome == {"fold": 0, "error": "this Dask worker runs mer-residual " + runs.kit_identity() + ", but the run "
                       "is mer-residual 0.0.9 (source 000000000000): install this kit on every worker (the same commit, "
                       "`make install`) and restart them"}
    assert not (tmp_path / "fold").exists()


def _ignores_interrupts() -> bool:
    import signal

    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_local_workers_leave_ctrl_c_to_the_run():
    """Ctrl-C reaches every process of the terminal's group: the local cluster's workers
    ignore it (no page of tracebacks from each), while this process still handles it."""
    import signal

    handler = signal.getsignal(signal.SIGINT)
    client, owned, _ = runs._open_client(None, 1, 1)
    try:
        assert list(client.run(_ignores_interrupts).values()) == [True]
        assert signal.getsignal(signal.SIGINT) is handler and not owned
    finally:
        runs.close_local_clusters()
