"""The atomic-write helper: all or nothing, and the usual permissions."""
import os
import stat
from pathlib import Path

import pytest

from mer_utils.files import atomic_write_bytes, atomic_write_text


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_umask_permissions_like_any_other_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        written = atomic_write_text(tmp_path / "out" / "metrics.json", "{}\n")
        binary = atomic_write_bytes(tmp_path / "image.png", b"\x89PNG", fsync=True)
    finally:
        os.umask(old)
    expected = 0o666 & ~umask
    assert stat.S_IMODE(plain.stat().st_mode) == expected
    assert stat.S_IMODE(written.stat().st_mode) == expected
    assert stat.S_IMODE(binary.stat().st_mode) == expected
    assert written.read_text() == "{}\n" and binary.read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["image.png", "metrics.json", "out", "plain.txt"]


def test_a_failed_atomic_write_names_the_file_meant_not_a_temporary_one(tmp_path):
    """The CLI prints an OSError's filename: it must be the file the kit meant to write (a
    temporary ".name.xxxx.tmp" beside it means nothing to a user), and nothing is left."""
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    with pytest.raises(OSError) as raised:
        atomic_write_text(blocker / "done.json", "{}")
    assert raised.value.filename == str(blocker / "done.json") and raised.value.strerror
    assert blocker.read_text() == "mine"


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pool_workers_end_with_a_killed_parent(tmp_path):
    """A `mer` command killed (SIGKILL, an out-of-memory kill) while its process pool works must
    not leave the pool's processes behind, each holding its memory: the pools' initializers
    call exit_with_parent."""
    import subprocess
    import sys
    import time

    script = tmp_path / "pool.py"
    script.write_text(
        "import concurrent.futures as cf, multiprocessing, os, time\n"
        "from mer_utils.files import exit_with_parent\n"
        "def work(x):\n    time.sleep(30)\n\n"
        "if __name__ == '__main__':\n"
        "    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn'), initializer=exit_with_parent) as pool:\n"
        "        futures = [pool.submit(work, i) for i in range(2)]\n"
        "        while len(pool._processes) < 2 or not all(p.is_alive() for p in pool._processes.values()):\n"
        "            time.sleep(0.1)\n"
        "        time.sleep(2)\n"
        "        print(' '.join(str(p.pid) for p in pool._processes.values()), flush=True)\n"
        "        os.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    children = [int(pid) for pid in done.stdout.split()]
    assert done.returncode == -9 and len(children) == 2
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.1)
    alive = [pid for pid in children if _alive(pid)]
    for pid in alive:
        os.kill(pid, 9)
    assert not alive, f"pool workers {alive} outlived their killed parent"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for this purpose
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
