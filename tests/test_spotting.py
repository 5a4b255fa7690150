"""Apex spotting: the curve, the protocol option --apex and its error against the annotation."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mer_utils.cli import main
from mer_utils.data import load_samples, read_casme2
from mer_utils.errors import DatasetError, PreprocessError
from mer_utils.preprocess import infer_apex
from mer_utils.spotting import change_curve, smooth, smooth_window, spot_apex, spot_sample_apex, with_apex
from mer_utils.synth import make_synthetic


def drifting_clip(n_frames: int, apex_index: int, drift: float = 4.0, seed: int = 0) -> np.ndarray:
    """(T, 64, 64, 3) crops: a textured face whose brightness drifts up over the clip (a slow
    change, largest at the end) plus a local bump rising to apex_index and gone by the end."""
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 180, (64, 64)).astype(np.float64)
    frames = []
    for t in range(n_frames):
        progress = t / (n_frames - 1)
        level = np.sin(0.5 * np.pi * t / apex_index) ** 2 if t <= apex_index else \
            np.cos(0.5 * np.pi * (t - apex_index) / (n_frames - 1 - apex_index)) ** 2
        frame = base + drift * progress
        frame[20:30, 20:34] += 25 * level
        frame += rng.normal(0, 1.0, frame.shape)
        frames.append(np.repeat(np.clip(frame, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return np.stack(frames)


def test_spotting_finds_the_apex_despite_a_drift_that_peaks_at_the_offset():
    crops = drifting_clip(20, apex_index=6)
    plain = [np.abs(c.astype(float) - crops[0]).mean() for c in crops]
    assert int(np.argmax(plain)) == 19  # the naive change from the onset peaks at the offset
    spotted = spot_apex(crops, list(range(100, 120)))
    assert abs(spotted.apex - 106) <= 1
    assert len(spotted.raw) == len(spotted.smoothed) == 20
    assert spotted.raw[0] == pytest.approx(0) and spotted.raw[-1] == pytest.approx(0)


def test_curve_smoothing_and_short_clips():
    assert [smooth_window(n) for n in (8, 29, 30, 59, 60, 95)] == [1, 1, 3, 3, 5, 7]
    assert np.allclose(smooth([0, 3, 0, 0], 3), [1, 1, 1, 0])
    two = drifting_clip(8, 3)[:2]
    assert spot_apex(two, [5, 6]).apex == 6
    with pytest.raises(PreprocessError, match="crops but"):
        spot_apex(two, [5])
    with pytest.raises(PreprocessError, match="expects"):
        change_curve(np.zeros((3, 8, 8)))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("spot") / "data"
    make_synthetic(root, subjects=1, workers=1, progress=False)
    return root


@pytest.mark.slow
def test_spotting_beats_the_middle_frame_on_synthetic_casme2(tiny_root):
    samples = [s for s in read_casme2(tiny_root / "CASME2") if not s.apex_inferred]
    spotted = [abs(spot_sample_apex(s, size=96).apex - s.apex) for s in samples]
    middle = [abs(infer_apex(s.onset, s.offset) - s.apex) for s in samples]
    assert np.mean(spotted) < np.mean(middle)
    assert np.mean(spotted) <= 1.0


@pytest.mark.slow
def test_protocol_apex_modes(tiny_root):
    with pytest.warns(UserWarning, match="without a sample list"):
        annotated = load_samples(tiny_root, "megc2019", apex="annotated")
    smic = [s for s in annotated if s.dataset == "smic"]
    assert smic and all(s.apex_inferred and s.apex == infer_apex(s.onset, s.offset) for s in smic)
    middle = with_apex(annotated, "middle")
    assert all(s.apex == infer_apex(s.onset, s.offset) and s.extra["apex_source"] == "middle" for s in middle)
    casme = [s for s in annotated if s.dataset == "casme2" and not s.apex_inferred]
    spotted = load_samples(tiny_root, "casme2-5class", apex="spotted")
    by_key = {s.key: s for s in spotted}
    for sample in casme:
        assert by_key[sample.key].apex_inferred and by_key[sample.key].extra["annotated_apex"] == sample.apex
        assert sample.onset < by_key[sample.key].apex < sample.offset
    # the spotted apex is the spotter's, not the middle frame: as close to the annotation as spot_sample_apex
    spotted_error = np.mean([abs(by_key[s.key].apex - s.apex) for s in casme])
    middle_error = np.mean([abs(infer_apex(s.onset, s.offset) - s.apex) for s in casme])
    assert spotted_error < middle_error and spotted_error <= 1.0
    with pytest.raises(DatasetError, match="apex 'guess' is not one of annotated, middle, spotted"):
        load_samples(tiny_root, "casme2-5class", apex="guess")


@pytest.mark.slow
def test_data_command_lists_spotted_apexes(tiny_root, capsys):
    assert main(["data", "--root", str(tiny_root), "--protocol", "casme2-5class", "--apex", "spotted", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records and all(r["apex_inferred"] and r["apex_source"] == "spotted" for r in records)
    assert all(r["onset"] <= r["apex"] <= r["offset"] for r in records)
    assert any(r["annotated_apex"] is not None for r in records)
    annotated = [r for r in records if r["annotated_apex"] is not None]
    spotted_error = np.mean([abs(r["apex"] - r["annotated_apex"]) for r in annotated])
    middle_error = np.mean([abs(infer_apex(r["onset"], r["offset"]) - r["annotated_apex"]) for r in annotated])
    assert spotted_error < middle_error  # the spotter's frames, not the middle ones
