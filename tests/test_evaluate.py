"""MEGC2019 metrics on concatenated LOSO predictions, the predictions table, figures."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
)

from mer_utils.evaluate import (
    EvaluationError,
    accuracy,
    bootstrap_interval,
    check_coverage,
    classes_from_frame,
    compute_metrics,
    confusion,
    format_metrics,
    metrics_from_file,
    read_predictions,
    resample_indices,
    resampled_scores,
    uar,
    uf1,
    write_metrics,
    write_predictions,
)
from mer_utils.figures import plot_confusion_matrix

MEGC = ["negative", "positive", "surprise"]
FIVE = ["others", "disgust", "happiness", "repression", "surprise"]


def table(rows, classes=MEGC):
    """Predictions table from (dataset, subject, clip, true, pred) rows, one-hot probs."""
    frame = pd.DataFrame(rows, columns=["dataset", "subject", "clip", "true_label", "pred_label"])
    for name in classes:
        frame[f"prob_{name}"] = (frame["pred_label"] == name).astype(float)
    return frame


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_scikit_learn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    n_present = 5 if seed % 2 == 0 else 4  # odd seeds: one class absent from the truth
    y_true = rng.choice(FIVE[:n_present], size=rng.integers(20, 80)).tolist()
    y_pred = rng.choice(FIVE, size=len(y_true)).tolist()
    present = [c for c in FIVE if c in y_true]

    np.testing.assert_array_equal(confusion(y_true, y_pred, FIVE),
                                  confusion_matrix(y_true, y_pred, labels=FIVE))
    assert uf1(y_true, y_pred, FIVE) == pytest.approx(
        f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
    assert accuracy(y_true, y_pred, FIVE) == pytest.approx(accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" on odd seeds
        warnings.simplefilter("ignore", UserWarning)
        expected_uar = balanced_accuracy_score(y_true, y_pred)
    assert uar(y_true, y_pred, FIVE) == pytest.approx(expected_uar)


def test_global_uf1_differs_from_the_mean_of_per_fold_uf1():
    # fold A: true a a b, pred a a a -> F1(a) = 2*2/(2*2+1+0) = 0.8, F1(b) = 0 -> UF1 0.4
    #         recall(a) = 1, recall(b) = 0 -> UAR 0.5
    # fold B: true b b,   pred b b   -> a absent, F1(b) = 1 -> UF1 1.0, UAR 1.0
    # mean of folds: UF1 0.7, UAR 0.75
    # concatenated: true a a b b b, pred a a a b b
    #   F1(a) = 4/(4+1+0) = 0.8, F1(b) = 4/(4+0+1) = 0.8 -> UF1 0.8
    #   recall(a) = 2/2, recall(b) = 2/3 -> UAR 5/6
    classes = ["a", "b"]
    fold_a = (["a", "a", "b"], ["a", "a", "a"])
    fold_b = (["b", "b"], ["b", "b"])
    assert uf1(*fold_a, classes) == pytest.approx(0.4)
    assert uf1(*fold_b, classes) == pytest.approx(1.0)
    all_true, all_pred = fold_a[0] + fold_b[0], fold_a[1] + fold_b[1]
    assert uf1(all_true, all_pred, classes) == pytest.approx(0.8)
    assert uar(all_true, all_pred, classes) == pytest.approx(5 / 6)
    assert (uar(*fold_a, classes) + uar(*fold_b, classes)) / 2 == pytest.approx(0.75)

    frame = table([("casme2", "s1", "c1", "a", "a"), ("casme2", "s1", "c2", "a", "a"),
                   ("casme2", "s1", "c3", "b", "a"), ("casme2", "s2", "c1", "b", "b"),
                   ("casme2", "s2", "c2", "b", "b")], classes)
    metrics = compute_metrics(frame)
    assert metrics["uf1"] == pytest.approx(0.8) and metrics["uar"] == pytest.approx(5 / 6)
    assert metrics["accuracy"] == pytest.approx(4 / 5)


def test_absent_class_is_left_out_and_noted():
    frame = table([("casme2", "sub01", "EP01", "negative", "negative"),
                   ("casme2", "sub01", "EP02", "positive", "surprise"),
                   ("casme2", "sub02", "EP01", "positive", "positive")])
    metrics = compute_metrics(frame)
    # negative: F1 1, recall 1; positive: F1 2/(2+0+1) = 2/3, recall 1/2; surprise absent
    assert metrics["uf1"] == pytest.approx((1 + 2 / 3) / 2)
    assert metrics["uar"] == pytest.approx((1 + 0.5) / 2)
    assert metrics["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert metrics["notes"] == [
        "class 'surprise' absent from casme2 ground truth: left out of UF1/UAR"]
    assert metrics["per_class"]["surprise"] == {"n": 0, "f1": 0.0, "recall": 0.0}
    assert "per_dataset" not in metrics


def test_per_dataset_scores_and_notes():
    frame = table([
        ("casme2", "casme2/sub01", "EP01", "negative", "negative"),
        ("casme2", "casme2/sub01", "EP02", "positive", "negative"),
        ("casme2", "casme2/sub02", "EP01", "positive", "positive"),
        ("smic", "smic/s1", "s1_ne_01", "negative", "surprise"),
        ("smic", "smic/s1", "s1_sur_01", "surprise", "surprise"),
    ])
    metrics = compute_metrics(frame)
    json.dumps(metrics)  # plain floats and ints only
    assert metrics["n"] == 5 and metrics["accuracy"] == pytest.approx(3 / 5)
    casme2, smic = metrics["per_dataset"]["casme2"], metrics["per_dataset"]["smic"]
    # casme2: negative F1 2/(2+1) , recall 1; positive F1 2/(2+1), recall 1/2
    assert casme2["n"] == 3 and casme2["accuracy"] == pytest.approx(2 / 3)
    assert casme2["uf1"] == pytest.approx(2 / 3) and casme2["uar"] == pytest.approx(0.75)
    # smic: negative F1 0, recall 0; surprise F1 2/(2+1), recall 1
    assert smic["uf1"] == pytest.approx(1 / 3) and smic["uar"] == pytest.approx(0.5)
    assert smic["confusion"] == [[0, 0, 1], [0, 0, 0], [0, 0, 1]]
    assert metrics["notes"] == [
        "class 'surprise' absent from casme2 ground truth: left out of UF1/UAR",
        "class 'positive' absent from smic ground truth: left out of UF1/UAR",
    ]
    text = format_metrics(metrics)
    assert "casme2" in text and "smic" in text and f"{smic['uf1']:.4f}" in text
    assert "note: class 'positive' absent from smic" in text


def test_duplicate_predictions_are_named():
    frame = table([("casme2", "sub01", "EP01", "negative", "negative"),
                   ("casme2", "sub01", "EP01", "negative", "positive"),
                   ("casme2", "sub02", "EP01", "positive", "positive")])
    with pytest.raises(EvaluationError, match=r"casme2/sub01/EP01 \(x2\)"):
        check_coverage(frame)
    with pytest.raises(EvaluationError, match="more than once"):
        compute_metrics(frame)


def test_metrics_from_file_names_the_file_of_a_duplicated_row(tmp_path):
    path = tmp_path / "mine.csv"
    write_predictions(table([("casme2", "sub01", "EP01", "negative", "negative"),
                             ("casme2", "sub01", "EP01", "negative", "positive")]), path)
    with pytest.raises(EvaluationError, match=r"^.*mine\.csv: 1 sample\(s\) predicted more than once: "
                                              r"casme2/sub01/EP01 \(x2\)$"):
        metrics_from_file(path)


def test_labels_that_disagree_with_their_probabilities_are_noted(tmp_path):
    path = tmp_path / "mine.csv"
    frame = table([("casme2", "sub01", "EP01", "negative", "negative"), ("casme2", "sub01", "EP02", "positive", "positive")])
    frame.loc[1, "prob_positive"], frame.loc[1, "prob_negative"] = 0.2, 0.5  # sums to 0.7, argmax negative
    frame.to_csv(path, index=False)
    with pytest.warns(UserWarning) as caught:
        metrics = metrics_from_file(path)
    assert metrics["accuracy"] == 1.0  # scored from pred_label
    expected = ["on 1 of 2 rows pred_label is not the class of the highest prob_ column (line(s) 3); the metrics use "
                "pred_label", "on 1 of 2 rows the prob_ columns do not sum to 1 (line(s) 3); the metrics use pred_label"]
    assert [str(w.message) for w in caught] == [f"{path}: {note}" for note in expected]
    assert metrics["notes"][-2:] == expected


def test_a_column_named_twice_is_refused_not_renamed(tmp_path):
    path = tmp_path / "mine.csv"
    write_predictions(table([("casme2", "sub01", "EP01", "negative", "negative")]), path)
    lines = path.read_text().splitlines()
    path.write_text(f"{lines[0]},prob_negative\n{lines[1]},0.5\n")
    with pytest.raises(EvaluationError, match=r"mine\.csv: column\(s\) prob_negative appear more than once"):
        metrics_from_file(path)


def test_missing_and_unexpected_predictions_are_named():
    frame = table([("samm", "samm/006", "006_1_2", "negative", "negative"),
                   ("samm", "samm/007", "007_3_1", "positive", "positive")])
    check_coverage(frame, ["samm/006/006_1_2", "samm/007/007_3_1"])
    expected = ["samm/006/006_1_2"] + [f"samm/009/009_{i}" for i in range(14)]
    with pytest.raises(EvaluationError) as error:
        check_coverage(frame, expected)
    message = str(error.value)
    assert "14 expected sample(s) have no prediction" in message
    assert "samm/009/009_0" in message and "... and 4 more" in message
    assert "1 predicted sample(s) are not in the sample list: samm/007/007_3_1" in message


def test_read_predictions_names_the_file_and_missing_column(tmp_path):
    path = tmp_path / "predictions.csv"
    table([("samm", "006", "006_1_2", "negative", "negative")]).drop(
        columns="pred_label").to_csv(path, index=False)
    with pytest.raises(EvaluationError, match=r"predictions\.csv.*\['pred_label'\]"):
        read_predictions(path)


def test_write_then_read_round_trip_keeps_subject_strings(tmp_path):
    frame = table([("samm", "006", "006_1_2", "negative", "negative"),
                   ("samm", "007", "007_3_1", "surprise", "positive")])
    frame = frame[["prob_surprise", "clip", "subject", "dataset", "true_label", "pred_label",
                   "prob_negative", "prob_positive"]]
    path = write_predictions(frame, tmp_path / "fold" / "predictions.csv")
    assert [p.name for p in path.parent.iterdir()] == ["predictions.csv"]  # no temp left
    back = read_predictions(path)
    assert list(back["subject"]) == ["006", "007"]
    assert list(back.columns[:5]) == ["dataset", "subject", "clip", "true_label", "pred_label"]
    assert classes_from_frame(back) == ["surprise", "negative", "positive"]
    assert classes_from_frame(back.drop(columns=["prob_surprise", "prob_negative",
                                                 "prob_positive"])) == [
        "negative", "positive", "surprise"]


def test_probabilities_outside_zero_one_are_rejected(tmp_path):
    frame = table([("samm", "006", "006_1_2", "negative", "negative")])
    frame.loc[0, "prob_positive"] = 1.5
    path = tmp_path / "p.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(EvaluationError, match=r"prob_positive.*line\(s\) 2 \(the header is line 1\) do not"):
        read_predictions(path)


def test_metrics_from_file_and_write_metrics(tmp_path):
    frame = table([("casme2", "sub01", "EP01", "negative", "negative"),
                   ("casme2", "sub02", "EP01", "positive", "negative")])
    path = write_predictions(frame, tmp_path / "predictions.csv")
    metrics = metrics_from_file(path)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["source"] == str(path)
    written = write_metrics(metrics, tmp_path / "metrics.json")
    assert json.loads(written.read_text()) == metrics


def test_labels_outside_the_classes_are_an_error():
    with pytest.raises(EvaluationError, match=r"\['fear'\]"):
        confusion(["negative", "fear"], ["negative", "negative"], MEGC)


def test_confusion_figure_labels_classes_and_annotates_every_cell(tmp_path):
    matrix = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    figure = plot_confusion_matrix(matrix, MEGC, "fold test", path=tmp_path / "cm.png")
    assert (tmp_path / "cm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == MEGC
    assert [t.get_text() for t in ax.get_yticklabels()] == MEGC
    cells = [t.get_text() for t in ax.texts]
    assert len(cells) == 9
    assert cells[0] == "5\n83%" and cells[3] == "2\n40%" and cells[8] == "0\n-"


# ------------------------------------------------------------- issue 10: classes, unreadable files


def plain_csv(path, rows):
    """A predictions CSV without prob_ columns, as a user might write one."""
    frame = pd.DataFrame(rows, columns=["dataset", "subject", "clip", "true_label", "pred_label"])
    frame.to_csv(path, index=False)
    return path


FIVE_ROWS = [("casme2", "sub01", "EP01", "happiness", "happiness"),
             ("casme2", "sub01", "EP02", "surprise", "others"),
             ("casme2", "sub02", "EP03", "others", "others"),
             ("casme2", "sub02", "EP04", "disgust", "repression")]


def test_metrics_take_the_classes_from_the_protocol_not_from_typos(tmp_path):
    good = metrics_from_file(plain_csv(tmp_path / "good.csv", FIVE_ROWS))
    assert good["classes"] == FIVE  # inferred: every label is a casme2-5class class
    typo = FIVE_ROWS[:2] + [("casme2", "sub02", "EP03", "others", "suprise")] + FIVE_ROWS[3:]
    path = plain_csv(tmp_path / "typo.csv", typo)
    message = (r"typo\.csv line 4 \(casme2/sub02/EP03\): pred_label 'suprise' is not one of the classes "
               r"others, disgust, happiness, repression, surprise of protocol casme2-5class, the closest")
    with pytest.raises(EvaluationError, match=message):
        metrics_from_file(path)
    with pytest.raises(EvaluationError, match=r"line 4 .*'suprise' is not one of the classes .* of protocol casme2-5class$"):
        metrics_from_file(path, protocol="casme2-5class")
    with pytest.raises(EvaluationError, match=r"line 4 .*'suprise' is not one of the classes .* given$"):
        metrics_from_file(path, classes=FIVE)


def test_labels_fitting_two_protocols_need_the_protocol(tmp_path):
    path = plain_csv(tmp_path / "both.csv", [("smic", "s1", "c1", "surprise", "surprise")])
    with pytest.raises(EvaluationError, match=r"both\.csv: the labels surprise fit protocols casme2-5class and "
                                              r"megc2019; say which with --protocol"):
        metrics_from_file(path)
    assert metrics_from_file(path, protocol="megc2019")["classes"] == MEGC
    assert metrics_from_file(path, classes=["surprise", "other"])["classes"] == ["surprise", "other"]


def test_prob_columns_bound_the_labels_too(tmp_path):
    frame = table([("samm", "006", "c1", "negative", "negative"), ("samm", "006", "c2", "positve", "negative")])
    path = tmp_path / "probs.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(EvaluationError, match=r"probs\.csv line 3 \(samm/006/c2\): true_label 'positve' is not one "
                                              r"of the classes negative, positive, surprise of its prob_ columns"):
        metrics_from_file(path)


@pytest.mark.parametrize("content, message", [
    (b"", r"empty\.csv: the file is empty \(0 bytes\); expected a predictions CSV"),
    (b"\n\n", r"empty\.csv: the file holds no CSV header \(2 bytes of blank lines\)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff", r"empty\.csv: not a text CSV file \(byte 0x89 at offset 0"),
])
def test_empty_or_binary_predictions_file_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(EvaluationError, match=message) as caught:
        read_predictions(path)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------ bootstrap interval


@pytest.mark.parametrize("seed", range(3))
def test_each_resample_is_scored_as_compute_metrics_scores_a_set(seed):
    """The vectorised scores of the resamples equal uf1/uar of each resampled set, one by
    one, including resamples that miss a class of the ground truth (left out of both)."""
    rng = np.random.default_rng(seed)
    y_true = rng.choice(FIVE, size=12, p=[0.5, 0.3, 0.1, 0.05, 0.05]).tolist()  # rare classes: often missed
    y_pred = rng.choice(FIVE, size=12).tolist()
    rows = resample_indices(len(y_true), resamples=200, seed=seed)
    index = {c: i for i, c in enumerate(FIVE)}
    scores = resampled_scores(np.array([index[v] for v in y_true]), np.array([index[v] for v in y_pred]), 5, rows)
    one_by_one = [([y_true[i] for i in r], [y_pred[i] for i in r]) for r in rows]
    assert any(len(set(t)) < len(set(y_true)) for t, _ in one_by_one)  # the case is exercised
    np.testing.assert_allclose(scores["uf1"], [uf1(t, p, FIVE) for t, p in one_by_one], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores["uar"], [uar(t, p, FIVE) for t, p in one_by_one], rtol=0, atol=1e-12)


def test_bootstrap_interval_is_the_central_share_of_the_resampled_scores():
    rng = np.random.default_rng(0)
    y_true = rng.choice(MEGC, size=60).tolist()
    y_pred = [t if rng.random() < 0.7 else rng.choice(MEGC) for t in y_true]
    interval = bootstrap_interval(y_true, y_pred, MEGC, level=0.9, resamples=500, seed=3)
    index = {c: i for i, c in enumerate(MEGC)}
    scores = resampled_scores(np.array([index[v] for v in y_true]), np.array([index[v] for v in y_pred]), 3,
                              resample_indices(60, 500, 3))
    assert interval["uf1"] == pytest.approx(list(np.percentile(scores["uf1"], [5, 95])))
    assert interval["uar"][0] < uar(y_true, y_pred, MEGC) < interval["uar"][1]
    assert (interval["level"], interval["resamples"], interval["seed"]) == (0.9, 500, 3)
    assert bootstrap_interval(y_true, y_pred, MEGC, level=0.9, resamples=500, seed=3) == interval  # seeded
    perfect = bootstrap_interval(y_true, y_true, MEGC)
    assert perfect["uf1"] == [1.0, 1.0] and perfect["uar"] == [1.0, 1.0]
    with pytest.raises(EvaluationError, match="between 0 and 1"):
        bootstrap_interval(y_true, y_pred, MEGC, level=95)


def test_the_interval_narrows_with_more_clips_and_is_reported_with_the_metrics():
    rng = np.random.default_rng(1)

    def width(n):
        y_true = rng.choice(MEGC, size=n).tolist()
        y_pred = [t if rng.random() < 0.6 else rng.choice(MEGC) for t in y_true]
        low, high = bootstrap_interval(y_true, y_pred, MEGC)["uf1"]
        return high - low

    assert width(400) < width(40) / 2  # about 1 / sqrt(n)
    rows = [("smic", "s1", f"c{i}", t, p) for i, (t, p) in
            enumerate(zip(["negative", "positive", "surprise"] * 5, ["negative", "positive", "negative"] * 5))]
    metrics = compute_metrics(table(rows))
    assert metrics["interval"]["uf1"][0] <= metrics["uf1"] <= metrics["interval"]["uf1"][1]
    assert json.loads(json.dumps(metrics))["interval"]["level"] == 0.95  # JSON-ready
    assert "95% interval over the clips (bootstrap, 2000 resamples): UF1 [" in format_metrics(metrics)
