"""The one-command reproduction: run the numbered notebooks with papermill under a parameter
profile, render them to HTML with an index, and each notebook's line in that index.

``reproduce`` runs ``notebooks/NN_*.ipynb`` into ``papermill_runs/<name>/<name>.ipynb`` (each
with ``run_dir`` = that folder and ``experiments_dir`` = the shared experiment store) and
renders ``reports/<name>.html`` and ``reports/index.html`` (``render_reports``).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import html
import json
import math
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from mer_utils.errors import ConfigError, MerError
from mer_utils.notebook import execute_notebook
from mer_utils.paths import (EXPERIMENTS_DIR, LENT_SCHEDULER_ENV, PROGRESS_ENV, REPORTS_DIR, RUNS_DIR, SYNTHETIC_DIR,
                             data_root_dir, notebooks_dir, repo_relative)
from mer_utils.provenance import data_description
from mer_utils.tables import DECIMALS

SUMMARY_FILE = "summary.json"  # a notebook's one-line summary for reports/index.html


def write_summary(run_dir: str | os.PathLike, title: str, data_root: str | os.PathLike,
                  key_numbers: Mapping[str, float], notes: Sequence[str] = ()) -> Path:
    """The notebook's line in ``reports/index.html``: its title, data, the key numbers it
    computed and notes (such as how CropNet was initialised), as ``run_dir/summary.json``."""
    path = Path(run_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "title": title,
        "data": data_description(data_root),
        "key_numbers": {k: _json_number(v) for k, v in key_numbers.items()},
        "notes": list(notes),
        "written": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def _json_number(value) -> int | float | None:
    """Counts stay integers, scores are rounded to DECIMALS, NaN becomes None."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    return round(float(value), DECIMALS)


NOTEBOOK_NAME = re.compile(r"^(\d\d)_\w+$")
RUNNER_PLACED = ("data_root", "run_dir", "output_dir")  # parameters run_notebooks sets for each notebook


PROFILES: dict[str, dict[str, object]] = {
    # The small synthetic default on a 2-core CPU, notebooks 01..08 in about 20 minutes: small
    # cached images and network inputs, the epochs, learning rate and batch size chosen on a
    # synthetic sets of other seeds (docs/tuning.md), two folds at a time. CASME II's five
    # classes train 12 epochs (a training fold has about 31 clips, 8 steps of 4 an epoch), the
    # composite 10 (about 60 clips a fold); both chosen on seeds 1, 4 and 5 (docs/tuning.md,
    # sections 7 and 8). The training images get the paper's flip and rotation but not its
    # colour jitter and grayscale, which slowed learning from scratch in this budget (chosen on
    # the same seeds, docs/tuning.md section 9). Table 4 compares ARS and RRS with and without
    # CGPO and Figure 5 is its N_key = 5 point (Table 3's experiment): each flow row costs about
    # 3 minutes and each other N_key point about 5, more CPU time than the demo has (full-gpu
    # runs all of them).
    "synthetic-cpu": {
        "image_size": 64, "preprocess_size": 128, "epochs": 10, "casme2_epochs": 12, "batch_size": 4,
        "augmentation": "geometric", "ablation_methods": "ars,rrs", "n_key_values": "5", "workers": 2,
        "tsne_size": 32,
    },
    # Real data on one GPU: the configuration's defaults (the paper's 320 x 320 input and
    # augmentation, TrainConfig's epochs), ImageNet weights as in the paper, N_key 1..10 as in Figure 5,
    # the official MEGC2019 list, one fold at a time (the local cluster's default on a CUDA
    # machine; several GPUs: pass a Dask scheduler with one worker per GPU), each fold kept as
    # an executed notebook 03. ``workers`` stays 0: it also sets the preprocessing processes,
    # which should use every core.
    "full-gpu": {
        "pretrained_weights": "imagenet", "n_key_values": "1,2,3,4,5,6,7,8,9,10",
        "fold_notebooks": True, "megc_list": "official",
    },
}


def list_notebooks(names: Iterable[str] | str | None = None, folder: str | os.PathLike | None = None) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in order; ``names`` picks some by number
    ("04") or by name ("04_casme2_5class"), None or empty means all."""
    folder = Path(folder) if folder is not None else notebooks_dir()
    found = sorted(p for p in folder.glob("*.ipynb") if NOTEBOOK_NAME.match(p.stem))
    if not names:  # None or empty: all of them
        return found
    wanted = names.split() if isinstance(names, str) else list(names)
    chosen = []
    for name in wanted:
        stem = Path(str(name)).stem
        matches = [p for p in found if p.stem == stem or p.stem.split("_", 1)[0] == stem.zfill(2)]
        if not matches:
            known = ", ".join(p.stem for p in found) or "none"
            raise ConfigError(f"no notebook {name!r} in {folder}; known notebooks: {known}")
        chosen += [p for p in matches if p not in chosen]
    return sorted(chosen)


def declared_parameters(path: str | os.PathLike) -> dict[str, dict]:
    """The notebook's parameters as papermill sees them: name -> {inferred_type_name, default, help}.
    Inspected once per version of the file (``mer reproduce`` asks twice: to type its ``-p``
    values, then to run), a fresh copy returned each time."""
    path = Path(path).resolve()
    stat = path.stat()
    return {name: dict(spec) for name, spec in _inspect_notebook(str(path), stat.st_mtime_ns, stat.st_size).items()}


@functools.lru_cache(maxsize=64)
def _inspect_notebook(path: str, mtime_ns: int, size: int) -> dict[str, dict]:
    import papermill

    return dict(papermill.inspect_notebook(path))


_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_CONVERTERS = {"int": int, "float": float, "str": str,
               "bool": lambda text: _BOOLEANS[text.strip().lower()]}


def typed_overrides(pairs: Iterable[Sequence[str]], names: Iterable[str] | str | None = None,
                    notebooks_folder: str | os.PathLike | None = None) -> dict[str, object]:
    """``-p NAME VALUE`` pairs of ``mer reproduce`` as ``run_notebooks`` overrides: each value
    converted to the type the notebooks' ``parameters`` cells declare for NAME (int, float,
    str or bool), the last pair winning for a repeated NAME. A name no notebook declares stays
    a string, for ``run_notebooks`` to refuse by name."""
    paths = list_notebooks(names, notebooks_folder if notebooks_folder is not None else notebooks_dir())
    declared: dict[str, dict] = {}
    for path in paths:
        for name, spec in declared_parameters(path).items():
            declared.setdefault(name, spec)
    overrides: dict[str, object] = {}
    for name, text in pairs:
        spec = declared.get(name)
        convert = _CONVERTERS.get(spec["inferred_type_name"], str) if spec else str
        try:
            overrides[name] = convert(text)
        except (KeyError, ValueError):
            raise ConfigError(f"-p {name} {text!r}: the notebooks declare {name} as {spec['inferred_type_name']} "
                              f"(default {spec['default']}); give a value of that type") from None
    return overrides


def _read_executed(path: Path):
    """The notebook at ``path`` when papermill wrote it (its metadata says so), else None
    (unreadable, or a notebook of the user's)."""
    import nbformat

    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # unreadable: not ours either
        return None
    return nb if "papermill" in nb.metadata else None


def _papermill_output(path: Path) -> bool:
    return _read_executed(path) is not None


def run_notebooks(names: Iterable[str] | str | None = None, data_root: str | os.PathLike = SYNTHETIC_DIR,
                  profile: str = "synthetic-cpu", out_dir: str | os.PathLike = RUNS_DIR,
                  overrides: Mapping[str, object] | None = None,
                  notebooks_folder: str | os.PathLike | None = None) -> dict[str, dict]:
    """Execute notebooks with papermill (kernel ``python3``, working directory ``notebooks/``)
    into ``out_dir/<name>/<name>.ipynb``, each with ``run_dir = out_dir/<name>``.

    Parameters: the profile's (PROFILES), then ``overrides``, each notebook receiving the
    ones it declares; paths are made absolute (relative ones from the current directory). An
    ``epochs`` override without ``casme2_epochs`` applies to every protocol (the profile's
    ``casme2_epochs`` is dropped).
    Preprocessing is cached and the runner skips finished folds, so a rerun only does what
    is missing. A failing notebook does not stop the others. Returns name -> {output,
    seconds, error} (error None on success). Never writes over a file papermill did not make.
    Where several notebooks take a Dask ``scheduler`` and a number of ``workers`` is set, they
    share one local cluster (``_lent_cluster``).
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; known profiles: {', '.join(PROFILES)}")
    folder = Path(notebooks_folder) if notebooks_folder is not None else notebooks_dir()
    paths = list_notebooks(names, folder)
    if not paths:
        raise ConfigError(f"no numbered notebooks (NN_name.ipynb) in {folder}")
    out_dir = Path(out_dir).resolve()
    overrides = dict(overrides or {})
    declared = {path: declared_parameters(path) for path in paths}
    known = set().union(*(set(d) for d in declared.values()))
    unknown = set(overrides) - known
    if unknown:
        import difflib

        hints = [f"{name}: did you mean {' or '.join(close)}?" for name in sorted(unknown)
                 if (close := difflib.get_close_matches(name, sorted(known), n=2))]
        raise ConfigError(f"override(s) {', '.join(sorted(unknown))} are parameters of none of "
                          f"{', '.join(p.stem for p in paths)}" + (f" ({'; '.join(hints)})" if hints else ""))
    placed = sorted(set(overrides) & set(RUNNER_PLACED))
    if placed:  # the runner sets these for each notebook; an override would be dropped silently
        raise ConfigError(f"override(s) {', '.join(placed)} are set by the runner: give the data with "
                          "data_root (--data-root) and the output folders with out_dir (--runs-dir)")
    output_folder(out_dir, "runs folder")
    outcome: dict[str, dict] = {}
    with _lent_cluster(paths, declared, {**PROFILES[profile], **overrides}) as lend:
        for path in paths:
            environment = lend() if "scheduler" in declared[path] else {}
            outcome[path.stem] = _run_one(path, folder, out_dir, declared[path], profile, overrides, data_root,
                                          environment)
    return outcome


@contextlib.contextmanager
def _lent_cluster(paths: Sequence[Path], declared: Mapping[Path, dict], values: Mapping[str, object]):
    """A function giving the environment of each notebook that takes a ``scheduler``:
    ``$DASK_SCHEDULER_ADDRESS`` (and ``$MER_LENT_SCHEDULER``, which names it as this run's) of
    one local Dask cluster. Its kernel inherits it, so the executed notebook's parameters record
    no address that ends with the run. Only where two or more such notebooks run, a number
    of ``workers`` is set (the synthetic-cpu profile's 2) and no scheduler is given
    (``scheduler`` or ``$DASK_SCHEDULER_ADDRESS``); else the function gives ``{}`` (each
    notebook starts its own cluster). One cluster instead of one per notebook saves each later
    notebook its workers' start and torch import (about 10 s on a 2-core CPU). It starts with
    the first notebook that takes it, and starts again when the kit's source has changed since
    (edited during the run), so that its workers run the code the notebook's kernel imports."""
    takers = [p.stem for p in paths if "scheduler" in declared[p]]
    workers = values.get("workers") or 0
    if (len(takers) < 2 or not isinstance(workers, int) or workers < 1 or values.get("scheduler")
            or os.environ.get("DASK_SCHEDULER_ADDRESS")):
        yield lambda: {}
        return
    from mer_utils.provenance import source_identity
    from mer_utils.runs import close_local_clusters, lend_local_cluster

    lent: dict[str, str] = {}

    def lend() -> dict[str, str]:
        source = source_identity()
        if lent.get("source") != source:
            if lent:
                close_local_clusters()
                print("[reproduce] the kit's source changed since its local cluster started: a new one", flush=True)
            lent.update(source=source, scheduler=lend_local_cluster(workers))
            print(f"[reproduce] one local Dask cluster of {workers} workers for {', '.join(takers)}: "
                  f"{lent['scheduler']}", flush=True)
        return {"DASK_SCHEDULER_ADDRESS": lent["scheduler"], LENT_SCHEDULER_ENV: lent["scheduler"]}

    try:
        yield lend
    finally:
        if lent:
            close_local_clusters()


def _run_one(path: Path, folder: Path, out_dir: Path, declared: Mapping[str, dict], profile: str,
             overrides: Mapping[str, object], data_root: str | os.PathLike,
             environment: Mapping[str, str] | None = None) -> dict:
    """Execute one notebook (``run_notebooks``), its kernel given ``environment`` besides this
    process's; returns {output, seconds, error}."""
    run_dir = out_dir / path.stem
    output = run_dir / path.name
    if folder.resolve() in output.resolve().parents:
        raise ConfigError(f"{output} would sit among the source notebooks in {folder}: choose another out_dir")
    if output.exists() and not _papermill_output(output):
        raise ConfigError(f"{output} exists and was not written by papermill: move it or choose another out_dir")
    profile_values = dict(PROFILES[profile])
    if "epochs" in overrides and "casme2_epochs" not in overrides:
        profile_values.pop("casme2_epochs", None)  # the epochs asked for apply to every protocol
    # the runner's folders as the notebooks read them back (repo_path): relative to the repository when in it
    values = {"experiments_dir": repo_relative(out_dir / Path(EXPERIMENTS_DIR).name), **profile_values, **overrides,
              "data_root": repo_relative(Path(data_root).resolve()), "run_dir": repo_relative(run_dir)}
    if "run_dir" not in declared:
        values["output_dir"] = repo_relative(run_dir)  # notebook 03 names its output folder output_dir
    parameters = {k: v for k, v in values.items() if k in declared}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)  # the last run's: only a finished run writes one
    print(f"[{path.stem}] running with {parameters}", flush=True)
    clock = time.perf_counter()
    error = None
    try:
        with fold_progress(path.stem), _environment(environment or {}):
            execute_notebook(path, output, parameters)
    except Exception as exc:  # recorded; the executed notebook shows the failing cell
        error = _error_text(exc)
    seconds = time.perf_counter() - clock
    print(f"[{path.stem}] {'FAILED: ' + error if error else 'done'} in {seconds:.0f} s -> {output}", flush=True)
    return {"output": output, "seconds": seconds, "error": error}


@contextlib.contextmanager
def _environment(values: Mapping[str, str]):
    """``values`` set in ``os.environ`` (which a notebook's kernel inherits) while inside, the
    previous values restored after."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def fold_progress(name: str, poll_s: float = 1.0):
    """While a notebook runs, print on this console each LOSO fold its runner finishes, as
    "[name] <experiment>: 3 of 14 folds done (fold 2, sub03), 95 s": the notebook's own
    progress bars go into the notebook, and a long notebook would otherwise show nothing here
    for minutes. The kernel inherits ``$MER_PROGRESS_FILE`` (``paths.PROGRESS_ENV``), which
    names a temporary file the runner appends to and a thread here follows."""
    handle, file = tempfile.mkstemp(prefix="mer-progress-", suffix=".txt")
    os.close(handle)
    stop = threading.Event()
    clock = time.perf_counter()

    def follow() -> None:
        with open(file, "rb") as lines:
            while True:
                line = lines.readline()
                if line.endswith(b"\n"):
                    text = line.decode("utf-8", errors="replace").rstrip()
                    print(f"[{name}] {text}, {time.perf_counter() - clock:.0f} s", flush=True)
                elif stop.is_set():
                    return
                else:
                    lines.seek(-len(line), os.SEEK_CUR)  # a line still being written: read it whole later
                    stop.wait(poll_s)

    thread = threading.Thread(target=follow, name=f"fold progress {name}", daemon=True)
    thread.start()
    try:
        with _environment({PROGRESS_ENV: file}):
            yield file
    finally:
        stop.set()
        thread.join(timeout=10)
        with contextlib.suppress(OSError):
            os.unlink(file)


def _error_text(exc: BaseException) -> str:
    """A failed notebook's error as the console shows it: the failing cell's exception type
    and its whole message (several lines when the kit lists several problems), without the
    traceback; other exceptions by type and last line."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)  # PapermillExecutionError
    if ename:
        return f"{ename}: {str(evalue).strip()}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1] if text else ''}"


def output_folder(path: str | os.PathLike, what: str, create: bool = True) -> Path:
    """``path`` as a folder the kit may write into, created if missing (``create``; without
    it, only checked); ConfigError in one line when it is a file or cannot be created
    (``what`` names the option)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder: give a folder")
    if not create:
        parent = next(p for p in path.absolute().parents if p.exists())
        if not path.exists() and not parent.is_dir():
            raise ConfigError(f"{what} {path} cannot be created: {parent} is a file")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be created: {err.strerror or err}") from None
    return path


REPORT_MARK = '<meta name="generator" content="mer-residual render_reports">'


def _written_by_kit(report: Path) -> bool:
    """Whether an existing report file was written by ``render_reports`` (its mark, or, for
    reports of earlier versions, the index's heading or nbconvert's page of that notebook)."""
    try:
        head = report.read_text(encoding="utf-8", errors="replace")[:20000]
    except OSError:
        return False
    if REPORT_MARK in head:
        return True
    if report.name == "index.html":
        return "<h1>mer-residual: reproduction reports</h1>" in head
    return f"<title>{html.escape(report.stem)}</title>" in head and "jp-Notebook" in head


def _notebook_status(nb) -> str:
    """"ok", "failed: <error>", or "incomplete" for a run that never finished (killed, or
    its machine stopped): papermill saves the notebook as it goes and writes ``end_time``
    last, so a notebook without it shows only the cells that ran, and whatever
    ``summary.json`` is beside it belongs to no finished run."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"failed: {output.get('ename', 'error')}: {output.get('evalue', '')}"[:200]
    papermill_record = nb.metadata.get("papermill", {})
    if papermill_record.get("exception"):
        return "failed"
    if papermill_record and not papermill_record.get("end_time"):
        return "incomplete: the run stopped before the notebook finished (killed?); run it again"
    return "ok"


def _notebook_title(nb, default: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return default


def _data_of_run(nb) -> str:
    """The data description from the executed notebook's ``data_root`` parameter ("-" if none)."""
    data_root = nb.metadata.get("papermill", {}).get("parameters", {}).get("data_root")
    return data_description(data_root) if data_root and Path(data_root).is_dir() else "-"


def _format_number(value) -> str:
    """A key number as the index shows it: counts without decimals, scores with DECIMALS."""
    if value is None:
        return "-"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.{DECIMALS}f}"
    return str(int(value)) if isinstance(value, float) else str(value)


def _numbers_text(summary: Mapping) -> str:
    """A summary's key numbers as the index and the console show them: "UF1 0.6993; n 37"."""
    return "; ".join(f"{k} {_format_number(v)}" for k, v in summary.get("key_numbers", {}).items())


def _index_row(path: Path, nb, report_name: str) -> str:
    summary_path = path.parent / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    status = _notebook_status(nb)
    if status != "ok":
        summary = {}  # a summary from an earlier, successful run would not describe this one
    title = summary.get("title") or _notebook_title(nb, path.stem)
    data = summary.get("data") or _data_of_run(nb)
    finished = (nb.metadata.get("papermill", {}).get("end_time")
                or _dt.datetime.fromtimestamp(path.stat().st_mtime).isoformat())
    date = str(finished)[:16].replace("T", " ")
    numbers = _numbers_text(summary)
    notes = "<br>".join(html.escape(note) for note in summary.get("notes", []))  # one note a line
    cells = [f'<a href="{html.escape(report_name)}">{html.escape(path.stem)}</a>', html.escape(title),
             html.escape(data), html.escape(date), html.escape(numbers or "-"),
             notes, html.escape(status)]
    style = "" if status == "ok" else ' class="failed"'
    return f"<tr{style}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def result_lines(runs_dir: str | os.PathLike, names: Iterable[str]) -> list[str]:
    """What the notebooks ``names`` computed, as ``reproduce`` prints it on the console after
    the reports: a line naming the data, then one line per notebook with the key numbers of
    its ``summary.json`` and its tables' chance levels (the notes that state them), e.g.
    "  04_casme2_5class: ARS + CropNet UF1 0.6993; ... | Table 2: chance UF1 0.1938 (...)"."""
    lines, data = [], set()
    for name in names:
        path = Path(runs_dir) / name / SUMMARY_FILE
        if not path.is_file():
            continue
        summary = json.loads(path.read_text(encoding="utf-8"))
        data.add(summary.get("data", ""))
        numbers = _numbers_text(summary)
        chance = [note for note in summary.get("notes", []) if "chance" in note]
        lines.append(f"  {name}: {numbers or '-'}" + "".join(f" | {note}" for note in chance))
    if not lines:
        return []
    where = "; ".join(sorted(d for d in data if d)) or "the data named in each report"
    return [f"results on {where}:"] + lines


_INDEX_TEMPLATE = """<!DOCTYPE html>
<html><head><meta charset="utf-8">{mark}<title>mer-residual reports</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}} tr.failed{{background:#fdd}}</style>
</head><body>
<h1>mer-residual: reproduction reports</h1>
<p>Zhao, Chen and Luo (2021), Micro-Expression Recognition Based on Pixel Residual Sum and Cropped Gaussian
Pyramid. One line per executed notebook (from {runs}); numbers are those computed in that run, on the data named
beside them. Results on synthetic data test the pipeline, not the method. Rendered {now}.</p>
<table><tr><th>notebook</th><th>title</th><th>data</th><th>run finished</th><th>key numbers</th><th>notes</th>
<th>status</th></tr>
{rows}
</table></body></html>
"""


def html_exporter():
    """nbconvert's HTMLExporter, or a ConfigError in one line where its installation cannot
    give one (its HTML template missing, as where the package's data files were not
    installed). ``reproduce`` asks before any notebook runs, so that is not found after them."""
    from nbconvert import HTMLExporter

    try:
        return HTMLExporter()
    except (ValueError, OSError) as error:  # e.g. "No template sub-directory with name 'lab' found in ..."
        reason = str(error).splitlines()[0].rstrip(":") if str(error) else type(error).__name__
        raise ConfigError(f"nbconvert cannot make HTML reports ({reason}): its templates are missing, so its "
                          "installation is incomplete; reinstall nbconvert (make install), or set JUPYTER_PATH "
                          "to the share/jupyter folder that holds nbconvert/templates") from None


def render_reports(runs_dir: str | os.PathLike = RUNS_DIR, reports_dir: str | os.PathLike = REPORTS_DIR) -> Path:
    """Convert every executed notebook ``runs_dir/<name>/<name>.ipynb`` to ``reports_dir/<name>.html``
    (nbconvert HTMLExporter; figures are embedded) and write ``reports_dir/index.html``
    linking them, one line each: title, data, date, key numbers, notes and status. A report
    file there that the kit did not write is never replaced (ConfigError before any is written)."""
    runs_dir, reports_dir = Path(runs_dir), Path(reports_dir)
    notebooks = {p: _read_executed(p) for p in sorted(runs_dir.glob("*/*.ipynb")) if p.stem == p.parent.name}
    executed = {p: nb for p, nb in notebooks.items() if nb is not None}  # each read once
    if not executed:
        raise ConfigError(f"no executed notebooks under {runs_dir} (expected <name>/<name>.ipynb written by "
                          "papermill): run run_notebooks or reproduce first")
    index = reports_dir / "index.html"
    reports = [index] + [reports_dir / f"{path.stem}.html" for path in executed]
    foreign = [str(r) for r in reports if r.exists() and (not r.is_file() or not _written_by_kit(r))]
    if foreign:  # checked before anything is written: a user's own file is never replaced
        raise ConfigError(f"{', '.join(foreign)} exist{'s' if len(foreign) == 1 else ''} and "
                          f"{'was' if len(foreign) == 1 else 'were'} not written by the kit's reports: "
                          "move them or choose another reports folder (--reports-dir)")
    exporter = html_exporter()
    output_folder(reports_dir, "reports folder")
    rows = []
    for path, nb in executed.items():
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        report = reports_dir / f"{path.stem}.html"
        report.write_text(body.replace("<head>", "<head>" + REPORT_MARK, 1), encoding="utf-8")
        rows.append(_index_row(path, nb, report.name))
    now = _dt.datetime.now().astimezone().isoformat(timespec="minutes").replace("T", " ")
    runs = html.escape(repo_relative(Path(runs_dir).resolve()))
    index.write_text(_INDEX_TEMPLATE.format(mark=REPORT_MARK, runs=runs, now=now, rows="\n".join(rows)), encoding="utf-8")
    return index


def warn_without_gpu() -> None:
    """The full-gpu profile (the paper's 320 px, 30 epochs, N_key 1 to 10) on a machine where
    torch sees no CUDA GPU: a one-line warning before hours of CPU work (`make reproduce`
    picks that profile for any data root other than the synthetic one)."""
    import warnings

    import torch

    if not torch.cuda.is_available():
        warnings.warn("profile full-gpu on a machine without a CUDA GPU (torch sees none): each fold trains the "
                      "paper's 30 epochs at 320 px on the CPU, an hour or more per fold (about 0.75 s per training "
                      "sample on 2 cores); --profile synthetic-cpu or -p overrides (e.g. -p epochs 10 -p image_size "
                      "64) run smaller", UserWarning, stacklevel=3)


def check_weights(profile: str, overrides: Mapping[str, object] | None = None,
                  names: Iterable[str] | str | None = None) -> None:
    """Where the notebooks ``names`` (None: all) are to start from ImageNet (the full-gpu
    profile, or ``-p pretrained_weights imagenet``) and one of them trains (it takes
    ``pretrained_weights``): ConfigError in one line now when timm's weights can be had
    neither online nor from the cache, before any notebook preprocesses or trains."""
    from mer_utils.models.cropnet import IMAGENET, check_imagenet_weights
    from mer_utils.train import TrainConfig

    settings = {**PROFILES.get(profile, {}), **(overrides or {})}
    if str(settings.get("pretrained_weights", "")).lower() != IMAGENET:
        return
    if any("pretrained_weights" in declared_parameters(path) for path in list_notebooks(names)):
        check_imagenet_weights(str(settings.get("backbone") or TrainConfig().backbone))


def reproduce(data_root: str | os.PathLike = SYNTHETIC_DIR, profile: str = "synthetic-cpu",
              only: Iterable[str] | None = None, runs_dir: str | os.PathLike = RUNS_DIR,
              reports_dir: str | os.PathLike = REPORTS_DIR, overrides: Mapping[str, object] | None = None) -> Path:
    """Every table and figure in one call: run the notebooks (all, or ``only`` such as
    ["01", "04"]) with the profile's parameters into ``runs_dir``, render ``reports_dir``,
    return ``reports_dir/index.html``. Relative paths are taken from the current directory.
    Failed notebooks are rendered too (their error shows), then a MerError names them."""
    data_root = data_root_dir(Path(data_root).resolve(), "--data-root")
    output_folder(runs_dir, "runs folder", create=False)  # checked before any notebook runs
    output_folder(reports_dir, "reports folder", create=False)
    html_exporter()  # the reports can be made: checked before hours of notebooks
    if profile == "full-gpu":
        warn_without_gpu()
    check_weights(profile, overrides, only)
    outcome = run_notebooks(only, data_root=data_root, profile=profile, out_dir=runs_dir, overrides=overrides)
    index = render_reports(runs_dir, reports_dir)
    for line in result_lines(runs_dir, [name for name, run in outcome.items() if not run["error"]]):
        print(line, flush=True)
    failed = {name: run for name, run in outcome.items() if run["error"]}
    if failed:
        listed = "; ".join(f"{name} ({run['error']}, see {run['output']})" for name, run in failed.items())
        raise MerError(f"{len(failed)} of {len(outcome)} notebooks failed: {listed}; reports in {index}")
    return index
