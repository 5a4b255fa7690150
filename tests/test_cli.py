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
