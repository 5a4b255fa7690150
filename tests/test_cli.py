"""The command line lists its subcommands and turns kit errors into one-line messages."""
import subprocess
import sys

import pytest

from mer_utils.cli import build_parser, main

SUBCOMMANDS = ("data", "synth", "preprocess", "loso", "metrics", "reproduce", "train", "predict")


def test_module_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "mer_utils", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_console_script_help_lists_subcommands():
    from pathlib import Path
    mer = Path(sys.executable).with_name("mer")
    if not mer.exists():
        pytest.fail(f"console script {mer} is not installed (pip install -e . registers it)")
    out = subprocess.run([str(mer), "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert name in out


def test_unknown_protocol_is_a_clear_error(tmp_path, capsys):
    code = main(["data", "--root", str(tmp_path), "--protocol", "casme3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "casme3" in err and "casme2-5class" in err


def test_parser_knows_every_method():
    parser = build_parser()
    args = parser.parse_args(["loso", "--root", "d", "--protocol", "megc2019",
                              "--method", "lbptop", "--out", "o"])
    assert args.method == "lbptop"


def test_both_learning_rates_reach_the_configuration(tmp_path):
    from mer_utils.cli import _experiment_config

    args = build_parser().parse_args(["loso", "--root", str(tmp_path), "--protocol", "casme2-5class",
                                      "--lr", "2e-3", "--fc-lr", "3e-5", "--out", "o"])
    config = _experiment_config(args)
    assert (config.lr, config.fc_lr) == (2e-3, 3e-5)
    assert config.resolved().train_config().fc_lr == 3e-5
    assert config.resolved().recalibrate_bn is True
    args = build_parser().parse_args(["loso", "--root", str(tmp_path), "--protocol", "casme2-5class",
                                      "--no-recalibrate-bn", "--out", "o"])
    assert _experiment_config(args).resolved().train_config().recalibrate_bn is False
    assert _experiment_config(args).resolved().augmentation == "paper"
    args = build_parser().parse_args(["loso", "--root", str(tmp_path), "--protocol", "casme2-5class",
                                      "--augmentation", "geometric", "--out", "o"])
    assert _experiment_config(args).resolved().train_config().augmentation == "geometric"
    assert _experiment_config(args).resolved().ensemble == 1
    args = build_parser().parse_args(["train", "--root", str(tmp_path), "--protocol", "casme2-5class",
                                      "--ensemble", "2", "--out", "o"])
    assert _experiment_config(args).resolved().train_config().ensemble == 2


def test_loso_runs_folds_in_process_with_no_fold_notebooks(tmp_path, monkeypatch, capsys):
    import mer_utils.runs as runs

    seen = []

    def fake_run_experiment(config, out, **kwargs):
        seen.append(kwargs["use_papermill"])
        raise runs.MerError("stop here")

    monkeypatch.setattr(runs, "run_experiment", fake_run_experiment)
    base = ["loso", "--root", str(tmp_path), "--protocol", "casme2-5class", "--out", str(tmp_path / "o")]
    for flags in ([], ["--fold-notebooks"], ["--no-fold-notebooks"]):
        assert main(base + flags) != 0
    assert seen == [None, True, False]  # None: notebooks when the repository's notebook 03 is there
    assert "stop here" in capsys.readouterr().err


def test_metrics_on_an_empty_or_binary_file_is_one_line_and_status_2(tmp_path):
    empty, binary = tmp_path / "empty.csv", tmp_path / "model.pt"
    empty.write_bytes(b"")
    binary.write_bytes(bytes(range(256)) * 4)
    for path in (empty, binary):
        result = subprocess.run([sys.executable, "-m", "mer_utils", "metrics", str(path)],
                                capture_output=True, text=True)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {path}: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr


def test_metrics_on_a_folder_says_it_is_a_folder(tmp_path, capsys):
    assert main(["metrics", str(tmp_path)]) == 2  # e.g. the experiment folder instead of its predictions.csv
    assert capsys.readouterr().err == (f"error: {tmp_path}: is a folder, not a predictions CSV (an experiment "
                                       "folder holds predictions.csv)\n")


def test_metrics_classes_come_from_the_protocol(tmp_path, capsys):
    path = tmp_path / "predictions.csv"
    path.write_text("dataset,subject,clip,true_label,pred_label\n"
                    "casme2,sub01,EP01,surprise,surprise\n"
                    "casme2,sub01,EP02,happiness,suprise\n")
    assert main(["metrics", str(path)]) == 2
    assert "line 3 (casme2/sub01/EP02): pred_label 'suprise' is not one of the classes" in capsys.readouterr().err
    path.write_text(path.read_text().replace("suprise", "surprise"))
    assert main(["metrics", str(path), "--protocol", "casme2-5class"]) == 0
    assert "classes: others, disgust, happiness, repression, surprise" in capsys.readouterr().out
    assert main(["metrics", str(path), "--classes", "happiness,surprise"]) == 0
    assert "classes: happiness, surprise" in capsys.readouterr().out


def test_metrics_says_each_note_about_the_probabilities_once(tmp_path):
    """A note about the file goes into the table's "note:" lines; the console does not say
    it again as a warning. With --json (no table) the warning is the console's only copy."""
    path = tmp_path / "predictions.csv"
    path.write_text("dataset,subject,clip,true_label,pred_label,prob_happiness,prob_surprise\n"
                    "casme2,sub01,EP01,surprise,surprise,0.9,0.1\n"
                    "casme2,sub01,EP02,happiness,happiness,0.2,0.8\n")
    note = "on 2 of 2 rows pred_label is not the class of the highest prob_ column (line(s) 2, 3)"
    command = [sys.executable, "-m", "mer_utils", "metrics", str(path), "--classes", "happiness,surprise"]
    table = subprocess.run(command, capture_output=True, text=True)  # the console's own warning output
    assert table.returncode == 0 and f"note: {note}" in table.stdout and note not in table.stderr
    as_json = subprocess.run(command + ["--json"], capture_output=True, text=True)
    assert as_json.returncode == 0 and as_json.stderr.count(note) == 1 and note in as_json.stdout


def test_bad_inputs_fail_before_any_work_or_output(tmp_path, capsys):
    from test_data import make_casme2  # tests/ is on sys.path under pytest

    root = tmp_path / "data"
    make_casme2(root)
    cache = tmp_path / "cache"
    assert main(["preprocess", "--root", str(root), "--protocol", "casme2-5class", "--n-key", "0",
                 "--out", str(cache)]) == 2
    assert capsys.readouterr().err == "error: n_key must be a positive integer, got 0\n" and not cache.exists()
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    assert main(["preprocess", "--root", str(root), "--protocol", "casme2-5class", "--face-crop", "none",
                 "--workers", "1", "--out", str(blocker / "cache")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot write to the cache folder {blocker / 'cache'}")
    out = tmp_path / "experiment"
    assert main(["loso", "--root", str(tmp_path / "cache-less"), "--protocol", "casme2-5class",
                 "--method", "lbptop", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()
    readme = tmp_path / "README.md"
    readme.write_text("notes")
    assert main(["data", "--root", str(readme), "--protocol", "casme2-5class"]) == 2
    assert capsys.readouterr().err.startswith(f"error: data root {readme} is not a folder")
    assert blocker.read_text() == "mine" and readme.read_text() == "notes"
    assert main(["preprocess", "--root", str(root), "--protocol", "casme2-5class", "--size", "0",
                 "--out", str(cache)]) == 2  # its own name, not the face aligner's settings
    assert capsys.readouterr().err == "error: size must be an integer >= 8, got 0\n" and not cache.exists()
    model = tmp_path / "model"
    for command in ("train", "loso"):  # a list only megc2019 reads was dropped without a word
        assert main([command, "--root", str(root), "--protocol", "casme2-5class", "--megc-list", "official",
                     "--out", str(model)]) == 2
        assert capsys.readouterr().err == ("error: --megc-list applies to --protocol megc2019 only, "
                                           "not 'casme2-5class'\n") and not model.exists()
    with pytest.raises(SystemExit):  # a bare --only selected every notebook
        main(["reproduce", "--only"])
    assert "--only: expected at least one argument" in capsys.readouterr().err
    assert main(["loso", "--root", str(root), "--protocol", "casme2-5class", "--method", "lbptop", "--workers", "-1",
                 "--out", str(out)]) == 2  # was a ValueError traceback from the process pool, after the folder
    assert capsys.readouterr().err.startswith("error: workers must be an integer >= 0 (0 or None: one per fold")
    assert not out.exists()
    with pytest.raises(SystemExit):  # a bare --folds ran none
        main(["loso", "--root", str(root), "--protocol", "casme2-5class", "--out", str(out), "--folds"])
    assert "--folds: expected at least one argument" in capsys.readouterr().err and not out.exists()


def test_warnings_are_one_line_on_the_console(tmp_path):
    """Not Python's "file:line: UserWarning: ..." and the source line below it (a process of
    its own: pytest records warnings instead of printing them)."""
    from test_data import make_casme2

    make_casme2(tmp_path)
    run = subprocess.run([sys.executable, "-m", "mer_utils", "data", "--root", str(tmp_path), "--protocol", "megc2019"],
                         capture_output=True, text=True)
    assert run.returncode == 0 and run.stderr.startswith("warning: megc2019 without a sample list"), run.stderr
    assert run.stderr.count("\n") == 1 and "UserWarning" not in run.stderr


def test_reproduce_parameters_are_typed_as_the_notebooks_declare_them(tmp_path, monkeypatch, capsys):
    from mer_utils import reproduce

    seen = {}

    def fake_reproduce(**kwargs):
        seen.update(kwargs)
        return tmp_path / "reports" / "index.html"

    monkeypatch.setattr(reproduce, "reproduce", fake_reproduce)
    assert main(["reproduce", "--data-root", str(tmp_path), "-p", "ensemble", "3", "-p", "lr", "0.002",
                 "-p", "fold_notebooks", "true", "-p", "augmentation", "none", "-p", "ensemble", "2"]) == 0
    # the last of a repeated name wins, as with papermill's -p
    assert seen["overrides"] == {"ensemble": 2, "lr": 0.002, "fold_notebooks": True, "augmentation": "none"}
    assert seen["profile"] == "synthetic-cpu"


def test_reproduce_refuses_a_mistyped_or_unknown_parameter_before_any_work(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["reproduce", "--data-root", str(tmp_path), "--runs-dir", str(runs), "--reports-dir", str(tmp_path / "r")]
    assert main(args + ["-p", "ensemble", "two"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: -p ensemble 'two': the notebooks declare ensemble as int (default 1); "
                   "give a value of that type\n")
    assert main(args + ["-p", "fold_notebooks", "maybe"]) == 2
    assert "declare fold_notebooks as bool" in capsys.readouterr().err
    assert main(args + ["-p", "ensembles", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: override(s) ensembles are parameters of none of 01_preprocessing")
    assert err.endswith("08_predict (ensembles: did you mean ensemble?)\n")  # the closest declared name
    assert err.count("\n") == 1
    assert main(args + ["-p", "data_root", str(tmp_path / "elsewhere")]) == 2  # would be replaced silently
    assert capsys.readouterr().err.startswith("error: override(s) data_root are set by the runner")
    assert not runs.exists()


def test_predict_needs_a_clip_or_a_data_root_and_not_both(tmp_path, capsys):
    usage = "error: mer predict needs either --clip PATH or --root DIR --protocol P --out FILE"
    assert main(["predict", "--model", str(tmp_path)]) == 2
    assert capsys.readouterr().err == usage + "\n"
    assert main(["predict", "--model", str(tmp_path), "--clip", str(tmp_path), "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err == usage + "; --clip and --root were both given\n"


def test_ctrl_c_is_one_line_saying_what_is_kept(monkeypatch, capsys):
    import mer_utils.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_data", interrupted)
    assert cli.main(["data", "--root", "anywhere", "--protocol", "casme2-5class"]) == 130
    assert capsys.readouterr().err == ("interrupted: finished LOSO folds, cached images and executed notebooks are "
                                       "kept; the same command goes on from them\n")

