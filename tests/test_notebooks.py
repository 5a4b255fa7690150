"""Notebooks 01, 02 and 04-08: committed clean (no outputs, one `parameters` cell, kernel
python3), parameters typed for `papermill --help-notebook`, and each one executed end to end
through papermill on a tiny synthetic set (2 subjects per dataset, 1 epoch, 32 px, fold 0
only), its saved tables holding numbers. Notebook 03 is tested with the runner."""
import json
import math

import nbformat
import pandas as pd
import papermill
import pytest

from mer_utils import paths, reproduce
from mer_utils.synth import make_synthetic

NOTEBOOKS = ("01_preprocessing", "02_cgpo_visualisation", "04_casme2_5class", "05_megc2019_composite",
             "06_ablations", "07_tsne", "08_predict")
# Tiny settings for every notebook (each receives those it declares), then per notebook.
TINY = {"epochs": 1, "image_size": 32, "preprocess_size": 48, "batch_size": 8, "folds": "0", "workers": 1,
        "fold_notebooks": False, "n_key_values": "5", "unseen_subjects": 1}
PER_NOTEBOOK = {"02_cgpo_visualisation": {"preprocess_size": 96}, "06_ablations": {"ablation_methods": "ars"}}
CASME2_SAMPLES = 13  # the small synthetic CASME II cut to 2 subjects (casme2-5class)


def source(name):
    return paths.notebooks_dir() / f"{name}.ipynb"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every notebook run once, in order (01 fills the shared cache), on one tiny data set."""
    base = tmp_path_factory.mktemp("notebooks")
    make_synthetic(base / "data", subjects=2, workers=2, progress=False)
    outcome = {}
    for name in NOTEBOOKS:
        declared = reproduce.declared_parameters(source(name))
        wanted = {**TINY, **PER_NOTEBOOK.get(name, {})}
        outcome.update(reproduce.run_notebooks([name], data_root=base / "data", profile="synthetic-cpu",
                                             out_dir=base / "runs",
                                             overrides={k: v for k, v in wanted.items() if k in declared}))
    return base, outcome


def run_folder(runs, name):
    base, outcome = runs
    assert outcome[name]["error"] is None, f"{name} failed: {outcome[name]['error']} (see {outcome[name]['output']})"
    return base / "runs" / name


def table(folder, stem):
    return pd.read_csv(folder / f"{stem}.csv", index_col=0)


def assert_scores(frame, columns):
    for column in columns:
        values = frame[column].dropna()
        assert len(values) > 0, f"{column} holds no numbers"
        assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values), f"{column}: {list(values)}"


def executed_text(folder, name):
    nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    return "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
                     for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs)


# ----------------------------------------------------------------------------- committed form


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name):
    nb = nbformat.read(source(name), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: a cell carries outputs"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert "import mer_utils" in code[0].source
    assert any(c.cell_type == "markdown" and "Reproduces" in c.source for c in nb.cells)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_are_listed_with_types_and_help(name):
    parameters = papermill.inspect_notebook(str(source(name)))
    assert {"data_root", "run_dir"} <= set(parameters)
    assert parameters["run_dir"]["default"] == f'"papermill_runs/{name}"'
    for value in parameters.values():
        assert value["inferred_type_name"] in ("str", "int", "float", "bool"), value
        assert value["help"], f"{name}: parameter {value['name']} has no comment"



def configuration_defaults() -> dict:
    """The one default of each setting a notebook may declare, read from where it lives."""
    from mer_utils.baselines import lbptop
    from mer_utils.face import FACE_CROP
    from mer_utils.paths import EXPERIMENTS_DIR
    from mer_utils.preprocess import N_KEY, PREPROCESS_SIZE
    from mer_utils.runs import RunOptions
    from mer_utils.train import TrainConfig

    train, options = TrainConfig(), RunOptions()
    return {"epochs": train.epochs, "lr": train.lr, "fc_lr": train.fc_lr, "batch_size": train.batch_size,
            "image_size": train.image_size, "augmentation": train.augmentation, "ensemble": train.ensemble,
            "cgpo": train.cgpo, "recalibrate_bn": train.recalibrate_bn, "backbone": train.backbone, "seed": train.seed,
            "pretrained_weights": "none",
            "n_key": N_KEY, "preprocess_size": PREPROCESS_SIZE, "face_crop": FACE_CROP,
            "lbptop_frames": lbptop.FRAMES, "lbptop_size": lbptop.SIZE, "experiments_dir": EXPERIMENTS_DIR,
            "folds": options.folds, "scheduler": options.scheduler, "workers": options.workers,
            "fold_notebooks": options.fold_notebooks, "cache_dir": "", "megc_list": ""}


@pytest.mark.parametrize("name", [*NOTEBOOKS, "03_train"])
def test_notebook_defaults_are_the_configuration_defaults(name):
    """A notebook run by hand trains as `mer loso` and the runner do: every setting it
    declares defaults to the one default of the configuration (profiles override them)."""
    parameters = papermill.inspect_notebook(str(source(name)))
    expected = configuration_defaults()
    for key, value in parameters.items():
        if key in expected:
            default = value["default"].strip('"')
            if isinstance(expected[key], float):
                assert float(default) == expected[key], (name, key, default)
            else:
                assert default == str(expected[key]), (name, key, default, expected[key])


def test_notebook_03_and_the_runner_build_the_same_configuration(tmp_path):
    from mer_utils.config import ExperimentConfig
    from mer_utils.runs import fold_notebook_parameters

    (tmp_path / "CASME2").mkdir()
    defaults = {k: eval(v["default"]) for k, v in papermill.inspect_notebook(str(source("03_train"))).items()}
    by_notebook = ExperimentConfig.from_parameters({**defaults, "data_root": str(tmp_path)}).resolved()
    by_runner = ExperimentConfig(root=str(tmp_path), protocol="casme2-5class").resolved()
    assert by_notebook == by_runner
    tuned = by_runner.replace(epochs=7, lr=2e-3, fc_lr=3e-5, batch_size=4, image_size=48, cgpo=False,
                              recalibrate_bn=False, n_key=3).resolved()
    handed = fold_notebook_parameters(tuned, 0, tmp_path / "fold")
    assert ExperimentConfig.from_parameters({**defaults, **handed}).resolved() == tuned


def test_casme2_epochs_set_the_epochs_of_casme2_experiments_only(tmp_path):
    from mer_utils.config import ExperimentConfig
    from mer_utils.errors import ConfigError

    parameters = {"data_root": str(tmp_path), "epochs": 7, "casme2_epochs": 12}
    assert ExperimentConfig.from_parameters(parameters, protocol="casme2-5class").epochs == 12
    assert ExperimentConfig.from_parameters(parameters, protocol="megc2019").epochs == 7
    assert ExperimentConfig.from_parameters({**parameters, "casme2_epochs": 0}, protocol="casme2-5class").epochs == 7
    # an explicit override wins; no epochs at all leaves the configuration's default
    assert ExperimentConfig.from_parameters(parameters, protocol="casme2-5class", epochs=3).epochs == 3
    assert ExperimentConfig.from_parameters({"data_root": str(tmp_path)}, protocol="casme2-5class").epochs is None
    assert ExperimentConfig.from_parameters(parameters, protocol="casme2-5class", epochs=None).epochs is None
    for bad in (-1, "12", True):
        with pytest.raises(ConfigError, match="casme2_epochs"):
            ExperimentConfig.from_parameters({**parameters, "casme2_epochs": bad}, protocol="casme2-5class")


# ----------------------------------------------------------------------------- executed


@pytest.mark.slow
def test_01_preprocessing_shows_one_clip_and_fills_the_cache(runs):
    folder = run_folder(runs, "01_preprocessing")
    counts = table(folder, "preprocessing")
    assert list(counts.index) == ["ars", "rrs", "farneback", "tvl1"]
    assert (counts["images"] == CASME2_SAMPLES).all()
    assert ((counts["computed"] + counts["cached"]) == CASME2_SAMPLES).all()
    for png in ("clip_frames_and_crops.png", "clip_preprocessed.png"):
        assert (folder / png).stat().st_size > 10_000
    text = executed_text(folder, "01_preprocessing")
    assert "key frames (N_key = 5)" in text and "synthetic data" in text
    numbers = json.loads((folder / reproduce.SUMMARY_FILE).read_text(encoding="utf-8"))["key_numbers"]
    assert numbers["ARS images"] == CASME2_SAMPLES
    assert isinstance(numbers["wall s, all methods"], int)  # whole seconds in the index, not "3.5680"


@pytest.mark.slow
def test_02_cgpo_draws_ten_images_and_the_tiles(runs):
    folder = run_folder(runs, "02_cgpo_visualisation")
    geometry = table(folder, "cgpo_geometry")["value"]
    # the tiles of CropNet's input (image_size 32), not of the 96 px cached image it is resized from
    side = math.ceil(TINY["image_size"] / (3 - 2 * 0.3))
    assert geometry["tile side t (px)"] == str(side)
    assert float(geometry["nominal overlap alpha * t (px)"]) == round(0.3 * side, 1)
    assert (folder / "cgpo_images.png").is_file() and (folder / "cgpo_tiles_on_face.png").is_file()


@pytest.mark.slow
def test_04_table2_computes_three_rows_and_figure_4b(runs):
    folder = run_folder(runs, "04_casme2_5class")
    table2 = table(folder, "table2")
    rows = ["ARS + CropNet", "RRS + CropNet", "LBP-TOP"]
    assert list(table2.index)[:3] == rows
    assert list(table2.index)[3].startswith("chance: uniform") and list(table2.index)[4].startswith("chance: always")
    assert_scores(table2, ["Accuracy", "UF1", "UAR"])
    assert set(table2.loc[rows, "folds"]) == {"1/2"}
    for row in rows:  # each computed row carries its bootstrap interval, which holds its UF1
        low, high = (float(v) for v in table2.loc[row, "UF1 95% interval"].strip("[]").split(","))
        assert low <= round(table2.loc[row, "UF1"], 3) <= high
    store = runs[0] / "runs" / "experiments"
    with_cgpo = [p.name for p in store.glob("casme2-5class_*_k5_*") if "_nocgpo_" not in p.name]
    assert sorted(name.split("_")[1] for name in with_cgpo) == ["ars", "rrs"]
    assert all(json.loads((p / "metrics.json").read_text())["n"] > 0 for p in store.glob("casme2-5class_*"))
    assert (folder / "figure4b_confusion.png").is_file() and (folder / "table2_loss.png").is_file()
    assert "synthetic data" in (folder / "table2.md").read_text().splitlines()[0]
    summary = json.loads((folder / "summary.json").read_text())
    assert any("trained from scratch (no ImageNet weights), 1 epoch (fixed before the run), one network (seed 0), "
               "lr 0.001 (fully connected layers 0.0001), batch 8, "
               "at 32 px, the paper's flip and rotation only, tested with BatchNorm statistics of the un-augmented "
               "training images" in note
               for note in summary["notes"])
    uniform, majority = table2.index[3], table2.index[4]  # the index's line states Table 2's chance UF1
    assert (f"Table 2: chance UF1 {table2.loc[uniform, 'UF1']:.4f} (uniform random guess), "
            f"{table2.loc[majority, 'UF1']:.4f} ({majority.removeprefix('chance: ')}); "
            f"UAR {table2.loc[uniform, 'UAR']:.4f}, {table2.loc[majority, 'UAR']:.4f}") in summary["notes"]


@pytest.mark.slow
def test_05_table3_keeps_literature_apart(runs):
    folder = run_folder(runs, "05_megc2019_composite")
    table3 = table(folder, "table3")
    assert list(table3.index)[:2] == ["ARS + CropNet", "LBP-TOP"] and len(table3) == 4  # and two chance rows
    assert_scores(table3, ["UF1 full", "UAR full"])
    assert table3.loc["ARS + CropNet", "UF1 95% interval full"].startswith("[")
    assert "source" not in table3.columns
    literature = table(folder, "table3_literature")
    assert literature["reported by"].str.match(r"^(its authors|the MEGC2019 organisers): \w").all()
    assert not set(literature.index) & set(table3.index)
    assert "synthetic data" in (folder / "table3.md").read_text().splitlines()[0]
    assert "synthetic" not in (folder / "table3_literature.md").read_text()
    assert (folder / "figure4a_confusion.png").is_file() and (folder / "table3_loss.png").is_file()
    text = executed_text(folder, "05_megc2019_composite")  # no official list here: the kit's warning, one line
    assert "warning: megc2019 without a sample list" in text and "UserWarning" not in text
    notes = json.loads((folder / "summary.json").read_text())["notes"]
    uniform = table3.loc["chance: uniform random guess", "UF1 full"]
    assert any(note.startswith(f"Table 3: chance UF1 full {uniform:.4f} (uniform random guess), ") for note in notes)


@pytest.mark.slow
def test_06_table4_and_figure5(runs):
    folder = run_folder(runs, "06_ablations")
    table4 = table(folder, "table4")
    assert list(table4.index)[:2] == ["ARS + CropNet with CGPO", "ARS + CropNet without CGPO"]
    assert_scores(table4, ["UF1", "UAR"])
    # Table 4's ARS row with CGPO is Table 2's experiment and Figure 5's N_key 5 point is Table 3's: reused
    table2 = table(run_folder(runs, "04_casme2_5class"), "table2")
    assert table4.loc["ARS + CropNet with CGPO", "UF1"] == table2.loc["ARS + CropNet", "UF1"]
    curve = table(folder, "figure5_nkey")
    assert list(curve.index)[0] == "5"
    assert_scores(curve, ["UF1", "UAR"])
    table3 = table(run_folder(runs, "05_megc2019_composite"), "table3")
    assert curve.loc["5", "UF1"] == table3.loc["ARS + CropNet", "UF1 full"]
    assert (folder / "figure5_nkey.png").is_file()
    assert (folder / "table4_loss.png").is_file() and (folder / "figure5_loss.png").is_file()
    store = runs[0] / "runs" / "experiments"
    assert len(list(store.glob("casme2-5class_ars_*"))) == 2  # with and without CGPO, nothing twice
    no_cgpo = next(store.glob("casme2-5class_ars_nocgpo_*"))
    config = json.loads((no_cgpo / "config.json").read_text())["config"]
    assert config["cgpo"] is False and config["image_size"] == 32
    notes = json.loads((folder / "summary.json").read_text())["notes"]  # how Table 4's and Figure 5's rows trained
    assert any(note.endswith(": ARS + CropNet with CGPO, ARS + CropNet without CGPO.") for note in notes), notes
    assert any(note.startswith("CropNet trained from scratch") and note.endswith(": N_key 5.") for note in notes), notes
    assert any(note.startswith(f"Table 4: chance UF1 {table4.loc['chance: uniform random guess', 'UF1']:.4f} ")
               for note in notes), notes
    assert any(note.startswith(f"Figure 5: chance UF1 {curve.loc['chance: uniform random guess', 'UF1']:.4f} ")
               for note in notes), notes


@pytest.mark.slow
def test_07_tsne_has_four_panels_and_their_separation(runs):
    folder = run_folder(runs, "07_tsne")
    separation = table(folder, "figure6_silhouette")
    assert list(separation.index) == ["ARS", "RRS", "Farneback", "TV-L1"]
    assert separation["silhouette"].between(-1, 1).all()
    mean, high = separation["chance: shuffled labels, mean"], separation["chance: shuffled labels, 95th percentile"]
    assert mean.between(-1, 1).all() and (mean <= high).all()  # each map's chance level beside its silhouette
    notes = json.loads((folder / "summary.json").read_text())["notes"]
    assert notes == [f"chance silhouette (labels shuffled), mean / 95th percentile: ARS {mean['ARS']:.4f} / "
                     f"{high['ARS']:.4f}; " + "; ".join(f"{m} {mean[m]:.4f} / {high[m]:.4f}"
                                                       for m in ("RRS", "Farneback", "TV-L1"))]
    assert (folder / "figure6_tsne.png").stat().st_size > 10_000


@pytest.mark.slow
def test_08_predict_trains_predicts_an_unseen_video_and_explains(runs):
    folder = run_folder(runs, "08_predict")
    card = json.loads((folder / "model" / "model.json").read_text())
    assert card["training"]["epochs"] == 1 and card["model"]["image_size"] == 32
    assert card["training"]["augmentation"] == reproduce.PROFILES["synthetic-cpu"]["augmentation"]
    assert (folder / "videos" / "clip.avi").stat().st_size > 0
    influence = table(folder, "tile_influence")
    assert list(influence.index) == [f"z{i}" for i in range(10)]
    unseen = pd.read_csv(folder / "unseen_predictions.csv")
    assert len(unseen) > 0 and unseen["apex_spotted"].notna().all()
    for png in ("prediction.png", "tile_influence.png", "model_loss.png"):  # the model's loss curve too
        assert (folder / png).stat().st_size > 10_000
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["key_numbers"]["unseen clips"] == len(unseen)
    assert 0.0 <= summary["key_numbers"]["accuracy on unseen videos"] <= 1.0
    assert summary["key_numbers"]["apex MAE spotted (frames)"] < summary["key_numbers"]["apex MAE middle (frames)"]
    assert "chance accuracy on them" in summary["notes"][0]  # beside the accuracy it qualifies


@pytest.mark.slow
def test_executed_notebooks_render_to_an_index(runs, tmp_path):
    base, outcome = runs
    index = reproduce.render_reports(base / "runs", tmp_path / "reports")
    html = index.read_text()
    for name in NOTEBOOKS:  # every one ran (the runs fixture asserts it)
        line = next(row for row in html.splitlines() if f'href="{name}.html"' in row)
        assert "synthetic data" in line and ">ok<" in line
        assert "synthetic data" in (tmp_path / "reports" / f"{name}.html").read_text()


def test_a_kit_error_is_one_line_in_the_executed_notebook(tmp_path):
    """A bad input found in a notebook cell (here a clip's frames, raised as the readers raise
    it) shows as the kit's one line in the executed notebook and in papermill's error, not as
    the frames of the kit's code; an error that is not the kit's keeps IPython's traceback."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "python3",
                                                           "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("from mer_utils.errors import DatasetError\n"
                                          "def read_clip():\n"
                                          "    raise DatasetError('clip sub01/EP02_01f: onset 46 is after offset 40')"),
                nbformat.v4.new_code_cell("try:\n    int('x')\nexcept ValueError as err:\n"
                                          "    get_ipython().showtraceback()"),
                nbformat.v4.new_code_cell("read_clip()")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    with pytest.raises(papermill.PapermillExecutionError) as caught:
        papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   progress_bar=False)
    line = "DatasetError: clip sub01/EP02_01f: onset 46 is after offset 40"
    assert caught.value.traceback == [line]
    assert str(caught.value).strip().endswith(line)
    cells = [cell for cell in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
             if cell.cell_type == "code"]  # papermill puts a markdown cell on top that links the error
    assert [o.traceback for o in cells[2].outputs if o.output_type == "error"] == [[line]]
    other = [o for o in cells[1].outputs if o.output_type == "error"]  # a ValueError: IPython's own traceback
    assert other and len(other[0].traceback) > 1 and "ValueError" in other[0].traceback[-1]
