"""The atomic-write helper: all or nothing, and the usual permissions."""
import os
import stat

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
