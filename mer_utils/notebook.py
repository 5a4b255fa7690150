"""What the numbered notebooks share: their opener (:func:`open_run`: data root, run folder,
data description), the parsing of list-valued parameters ("0,3", "ars,rrs", "1,5,10"), and
the kernels the kit executes them in (:func:`kernel_manager_class`).
"""
from __future__ import annotations

import os
import re
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from mer_utils.errors import ConfigError, one_line_warning
from mer_utils.paths import data_root_dir, repo_path, repo_relative
from mer_utils.provenance import data_description, report_title


@dataclass(frozen=True)
class NotebookRun:
    """A notebook's data root and output folder (absolute), and what its reports say of the data."""

    root: Path
    out: Path
    data: str

    def title(self, what: str) -> str:
        """A table or figure title naming this run's data (``provenance.report_title``)."""
        return report_title(what, self.root)


def one_line_warnings() -> None:
    """Show this kernel's warnings as one line each ("warning: ..."), as ``mer`` does on the
    console: a rendered report then shows the kit's message, not the file, line number and
    source line of the call that raised it."""
    warnings.formatwarning = one_line_warning


def open_run(data_root: str | os.PathLike, run_dir: str | os.PathLike, quiet: bool = False) -> NotebookRun:
    """A notebook's first step: resolve ``data_root`` and ``run_dir`` (relative: from the
    repository root), check the data root is a folder, create the run folder, print both
    with the data description, and show warnings in one line (``one_line_warnings``)."""
    one_line_warnings()
    root, out = data_root_dir(repo_path(data_root), "data_root"), repo_path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = NotebookRun(root, out, data_description(root))
    if not quiet:
        print(f"data: {run.data}\noutputs: {repo_relative(out)}")
    return run


def fold_list(folds: str | Sequence[int] | None) -> list[int] | None:
    """The notebooks' ``folds`` parameter ("0,3", or "" for all folds) as fold indices or None."""
    if folds is None or (isinstance(folds, str) and not folds.strip()):
        return None
    return int_list(folds, "folds")


def int_list(values: str | Sequence[int], name: str = "values") -> list[int]:
    """A parameter such as ``n_key_values = "1,3,5,10"`` as ``[1, 3, 5, 10]``."""
    if isinstance(values, str):
        parts = [p for p in re.split(r"[,\s]+", values.strip()) if p]
        if not parts or not all(re.fullmatch(r"\d+", p) for p in parts):
            raise ConfigError(f"{name} {values!r}: expected comma-separated integers such as '1,3,5'")
        return [int(p) for p in parts]
    return [int(v) for v in values]


def str_list(values: str | Sequence[str], name: str = "values", allowed: Sequence[str] | None = None) -> list[str]:
    """A parameter such as ``methods = "ars,rrs"`` as ``["ars", "rrs"]``; with ``allowed``,
    a part that is not one of them is a ConfigError naming it and the parameter."""
    parts = [p for p in re.split(r"[,\s]+", values.strip()) if p] if isinstance(values, str) else list(values)
    if not parts:
        raise ConfigError(f"{name} {values!r}: expected a comma-separated list such as 'ars,rrs'")
    unknown = [p for p in parts if allowed is not None and p not in allowed]
    if unknown:
        raise ConfigError(f"{name} {values!r}: unknown {', '.join(map(repr, unknown))}; expected some of "
                          f"{', '.join(allowed)}")
    return parts


KERNEL_LOG = "kernel.log"  # beside an executed notebook: its kernel's own error output, kept only when not empty


def kernel_manager_class(log: str | os.PathLike | None = None):
    """The Jupyter kernel manager the kit starts its own kernels with: local IPC sockets
    instead of TCP, so a report shows no "Kernel is running over TCP" warning (the kernels
    run on this machine, started by the kit, and need no network port).

    ``log``: a file the kernel process's own error output is appended to, instead of this
    process's console. Only ipykernel's log lines go there (such as the traceback it prints
    when a Ctrl-C in the terminal, which reaches the kernel too, stops it in mid-reply, or
    "KeyboardInterrupt caught in kernel" when jupyter_client's interrupt before a shutdown
    meets a kernel still finishing); what the notebook's cells print goes into the notebook
    either way. :func:`execute_notebook` removes it when nothing was written."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")  # its sockets are files named after ``ip``: keep them in /tmp
            kwargs.setdefault("ip", os.path.join(tempfile.gettempdir(), f"mer-kernel-{uuid.uuid4().hex[:12]}"))
            super().__init__(**kwargs)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if log is None:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as errors:  # the kernel process keeps its own copy of the file
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stderr": errors})

    return IPCKernelManager


def execute_notebook(source: str | os.PathLike, output: str | os.PathLike, parameters: Mapping[str, object],
                     **papermill_options) -> None:
    """papermill's ``execute_notebook`` of ``source`` into ``output`` with ``parameters``, in
    the kit's kernel (``python3``, :func:`kernel_manager_class`; working directory the source's
    folder), without papermill's bar. The kernel's own error output goes to ``KERNEL_LOG``
    beside ``output``, which is removed when nothing was written to it."""
    import papermill

    log = Path(output).parent / KERNEL_LOG
    try:
        papermill.execute_notebook(str(source), str(output), parameters=dict(parameters), kernel_name="python3",
                                   cwd=str(Path(source).parent), progress_bar=False,
                                   kernel_manager_class=kernel_manager_class(log), **papermill_options)
    finally:
        if log.is_file() and log.stat().st_size == 0:
            log.unlink(missing_ok=True)
