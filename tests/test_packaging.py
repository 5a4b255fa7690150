"""The conda environment and pyproject agree, and the package ships its resources."""
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for line in lines
            if (m := re.match(r"\s*-?\s*\"?([A-Za-z0-9_.\-]+)(==[^\"\s]+)", line))}


def test_environment_yml_pins_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pyproject_pins = _pins(project["dependencies"])
    env_pins = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert env_pins, "environment.yml pins nothing"
    for name, pin in env_pins.items():
        assert pyproject_pins.get(name) == pin, f"{name}{pin} in environment.yml vs pyproject"
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_official_megc_list_ships_with_the_package():
    import mer_utils
    path = Path(mer_utils.__file__).parent / "resources" / "megc2019_composite.csv"
    rows = [line for line in path.read_text().splitlines()[1:] if line.strip()]
    assert len(rows) == 442


def test_make_picks_the_profile_and_folders_readme_promises():
    """README: `make reproduce DATA_ROOT=...` takes the full-gpu profile, PROFILE= overrides it,
    and `make demo SEED=N` generates and reports into folders of its own (a dry run, `make -n`)."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.fail("make is not installed: README's commands need it")

    def planned(*args: str) -> str:
        result = subprocess.run(["make", "-n", *args], cwd=ROOT, capture_output=True, text=True, check=True)
        return [line.strip() for line in result.stdout.splitlines() if " reproduce " in line][-1]

    assert planned("reproduce", "DATA_ROOT=/data/mer").endswith(
        "reproduce --data-root /data/mer --profile full-gpu --runs-dir papermill_runs --reports-dir reports")
    assert "--profile synthetic-cpu" in planned("reproduce", "DATA_ROOT=/data/mer", "PROFILE=synthetic-cpu")
    assert planned("demo").endswith(
        "reproduce --data-root data/synthetic --profile synthetic-cpu --runs-dir papermill_runs --reports-dir reports")
    assert planned("demo", "SEED=3").endswith("reproduce --data-root data/synthetic-seed3 --profile synthetic-cpu "
                                              "--runs-dir papermill_runs/seed3 --reports-dir reports/seed3")
    assert "-p ensemble 2" in planned("demo", "PARAMS=-p ensemble 2")
