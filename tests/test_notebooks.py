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

from mer_utils import reports
from mer_utils.synth import make_synthetic

NOTEBOOKS = ("01_preprocessing", "02_cgpo_visualisation", "04_casme2_5class", "05_megc2019_composite",
             "06_ablations", "07_tsne", "08_predict")
# Tiny settings for every notebook (each receives those it declares), then per notebook.
TINY = {"epochs": 1, "image_size": 32, "preprocess_size": 48, "batch_size": 8, "folds": "0", "workers": 1,
        "fold_notebooks": False, "n_key_values": "5", "unseen_subjects": 1}
PER_NOTEBOOK = {"02_cgpo_visualisation": {"image_side": 96}, "06_ablations": {"methods": "ars"}}
CASME2_SAMPLES = 13  # the small synthetic CASME II cut to 2 subjects (casme2-5class)


def source(name):
    return reports.notebooks_dir() / f"{name}.ipynb"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every notebook run once, in order (01 fills the shared cache), on one tiny data set."""
    base = tmp_path_factory.mktemp("notebooks")
    make_synthetic(base / "data", subjects=2, workers=2, progress=False)
    outcome = {}
    for name in NOTEBOOKS:
        declared = reports.notebook_parameters(source(name))
        wanted = {**TINY, **PER_NOTEBOOK.get(name, {})}
        outcome.update(reports.run_notebooks([name], data_root=base / "data", profile="synthetic-cpu",
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
    assert "from mer_utils import reports" in code[0].source
    assert any(c.cell_type == "markdown" and "Reproduces" in c.source for c in nb.cells)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_are_listed_with_types_and_help(name):
    parameters = papermill.inspect_notebook(str(source(name)))
    assert {"data_root", "run_dir"} <= set(parameters)
    assert parameters["run_dir"]["default"] == f'"papermill_runs/{name}"'
    for value in parameters.values():
        assert value["inferred_type_name"] in ("str", "int", "float", "bool"), value
        assert value["help"], f"{name}: parameter {value['name']} has no comment"
    # the defaults are the synthetic-cpu profile, so a notebook run by hand matches `mer reproduce`
    for key, profile_value in reports.PROFILES["synthetic-cpu"].items():
        if key in parameters:
            assert parameters[key]["default"].strip('"') == str(profile_value), (name, key)


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


@pytest.mark.slow
def test_02_cgpo_draws_ten_images_and_the_tiles(runs):
    folder = run_folder(runs, "02_cgpo_visualisation")
    geometry = table(folder, "cgpo_geometry")["value"]
    side = math.ceil(96 / (3 - 2 * 0.3))
    assert geometry["tile side t (px)"] == str(side)
    assert float(geometry["nominal overlap alpha * t (px)"]) == round(0.3 * side, 1)
    assert (folder / "cgpo_images.png").is_file() and (folder / "cgpo_tiles_on_face.png").is_file()


@pytest.mark.slow
def test_04_table2_computes_three_rows_and_figure_4b(runs):
    folder = run_folder(runs, "04_casme2_5class")
    table2 = table(folder, "table2")
    assert list(table2.index) == ["ARS + CropNet", "RRS + CropNet", "LBP-TOP"]
    assert_scores(table2, ["Accuracy", "UF1", "UAR"])
    assert set(table2["folds"]) == {"1/2"}
    for experiment in ("ars_cropnet", "rrs_cropnet", "lbptop"):
        assert json.loads((folder / experiment / "metrics.json").read_text())["n"] > 0
    assert (folder / "figure4b_confusion.png").is_file()
    assert "synthetic data" in (folder / "table2.md").read_text().splitlines()[0]
    summary = json.loads((folder / "summary.json").read_text())
    assert any("trained from scratch (no ImageNet weights), 1 epoch at 32 px" in note for note in summary["notes"])


@pytest.mark.slow
def test_05_table3_keeps_literature_apart(runs):
    folder = run_folder(runs, "05_megc2019_composite")
    table3 = table(folder, "table3")
    assert list(table3.index) == ["ARS + CropNet", "LBP-TOP"]
    assert_scores(table3, ["UF1 full", "UAR full"])
    assert "source" not in table3.columns
    literature = table(folder, "table3_literature")
    assert set(literature["source"]) == {"reported by authors"}
    assert not set(literature.index) & set(table3.index)
    assert "synthetic data" in (folder / "table3.md").read_text().splitlines()[0]
    assert "synthetic" not in (folder / "table3_literature.md").read_text()
    assert (folder / "figure4a_confusion.png").is_file()


@pytest.mark.slow
def test_06_table4_and_figure5(runs):
    folder = run_folder(runs, "06_ablations")
    table4 = table(folder, "table4")
    assert list(table4.index) == ["ARS + CropNet with CGPO", "ARS + CropNet without CGPO"]
    assert_scores(table4, ["UF1", "UAR"])
    curve = table(folder, "figure5_nkey")
    assert list(curve.index) == [5]
    assert_scores(curve, ["UF1", "UAR"])
    assert (folder / "figure5_nkey.png").is_file()
    config = json.loads((folder / "table4_ars_no_cgpo" / "config.json").read_text())["config"]
    assert config["cgpo"] is False and config["image_size"] == 32


@pytest.mark.slow
def test_07_tsne_has_four_panels_and_their_separation(runs):
    folder = run_folder(runs, "07_tsne")
    separation = table(folder, "figure6_silhouette")
    assert list(separation.index) == ["ARS", "RRS", "Farneback", "TV-L1"]
    assert separation["silhouette"].between(-1, 1).all()
    assert (folder / "figure6_tsne.png").stat().st_size > 10_000


@pytest.mark.slow
def test_08_predict_trains_predicts_an_unseen_video_and_explains(runs):
    folder = run_folder(runs, "08_predict")
    card = json.loads((folder / "model" / "model.json").read_text())
    assert card["training"]["epochs"] == 1 and card["model"]["image_size"] == 32
    assert (folder / "videos" / "clip.avi").stat().st_size > 0
    influence = table(folder, "tile_influence")
    assert list(influence.index) == [f"z{i}" for i in range(10)]
    unseen = pd.read_csv(folder / "unseen_predictions.csv")
    assert len(unseen) > 0 and unseen["apex_spotted"].notna().all()
    for png in ("prediction.png", "tile_influence.png"):
        assert (folder / png).stat().st_size > 10_000
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["key_numbers"]["unseen clips"] == len(unseen)
    assert 0.0 <= summary["key_numbers"]["accuracy on unseen videos"] <= 1.0
    assert summary["key_numbers"]["apex MAE spotted (frames)"] < summary["key_numbers"]["apex MAE middle (frames)"]


@pytest.mark.slow
def test_executed_notebooks_render_to_an_index(runs, tmp_path):
    base, outcome = runs
    index = reports.render_reports(base / "runs", tmp_path / "reports")
    html = index.read_text()
    for name in NOTEBOOKS:
        if outcome[name]["error"] is None:
            line = next(row for row in html.splitlines() if f'href="{name}.html"' in row)
            assert "synthetic data" in line and ">ok<" in line
            assert "synthetic data" in (tmp_path / "reports" / f"{name}.html").read_text()
