"""convkit.atomic: whole-or-nothing writes that keep the replaced file's mode, owner and links,
and the clean-up of a dead run's temporary files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from convkit.atomic import is_temp_name, remove_stale, replacing, write_file


def test_replacement_keeps_mode(tmp_path):
    path = tmp_path / "private.png"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    write_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_temporary_file_is_never_wider_than_the_target(tmp_path):
    path = tmp_path / "private.png"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    with replacing(path) as temp:
        assert is_temp_name(temp.name) and temp.parent == tmp_path
        assert stat.S_IMODE(os.stat(temp).st_mode) == 0o600
        temp.write_bytes(b"new")
    assert path.read_bytes() == b"new"


def test_new_file_gets_the_umask_default(tmp_path):
    old = os.umask(0o022)
    try:
        write_file(tmp_path / "a.png", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.png").st_mode) == 0o644


def test_link_stays_a_link_and_its_target_is_replaced(tmp_path):
    real = tmp_path / "real.png"
    real.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    write_file(link, b"new")
    assert link.is_symlink() and real.read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["link.png", "real.png"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_owner_kept_when_allowed(tmp_path):
    path = tmp_path / "theirs.png"
    path.write_bytes(b"old")
    os.chown(path, 1234, 4321)
    write_file(path, b"new")
    st = os.stat(path)
    assert (st.st_uid, st.st_gid) == (1234, 4321)


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_file(path, boom)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.png"]


def test_remove_stale_takes_dead_runs_files_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".convkit-{dead_pid}-0123456789ab.tmp.png"
    live = tmp_path / f".convkit-{os.getpid()}-0123456789ab.tmp.png"
    meta = tmp_path / f".convkit-{dead_pid}-ba9876543210.tmp.png.meta"
    other = tmp_path / ".convkit-notes.txt"
    for p in (stale, live, meta, other):
        p.write_bytes(b"x")
    assert remove_stale(tmp_path) == 2
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])
