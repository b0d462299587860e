"""convkit.io.atomic: whole-or-nothing writes that keep the replaced file's mode, owner and links,
and the clean-up of a dead run's temporary files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from convkit.io.atomic import is_temp_name, remove_stale, replacing, write_file


@pytest.mark.parametrize("mode", [0o600, 0o444, 0o640])  # private, read-only, group-readable
def test_replacement_keeps_mode(tmp_path, mode):
    path = tmp_path / "private.png"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    write_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


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


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_read_only_file_of_an_ordinary_user(tmp_path):
    """As a user without root's privileges (nobody), whose own read-only file is replaced in
    place, as sed -i does: the temporary file must be writable by its owner meanwhile.
    convkit/io/atomic.py needs the standard library only: a copy of it runs under the system's
    Python (the checkout and its environment may be out of nobody's reach)."""
    import shutil

    import convkit.io.atomic

    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3")
    import tempfile
    from pathlib import Path

    # (pytest's tmp_path lies in folders only root may enter)
    folder = Path(tempfile.mkdtemp(prefix="convkit-nobody-"))
    request_cleanup = lambda: shutil.rmtree(folder, ignore_errors=True)  # noqa: E731
    shutil.copy(convkit.io.atomic.__file__, folder / "atomic_copy.py")
    path = folder / "ro.png"
    path.write_bytes(b"old")
    for p in (folder, path, folder / "atomic_copy.py"):
        os.chown(p, 65534, 65534)
    os.chmod(path, 0o444)
    code = ("import sys\nsys.path.insert(0, sys.argv[1])\nfrom atomic_copy import write_file\n"
            "write_file(sys.argv[2], b'new')\n")
    try:
        try:
            res = subprocess.run([python, "-B", "-c", code, str(folder), str(path)],
                                 capture_output=True, text=True, timeout=60,
                                 preexec_fn=lambda: os.setuid(65534))
        except PermissionError:
            pytest.skip("nobody cannot run the system python3 here")
        assert res.returncode == 0, res.stderr
        assert path.read_bytes() == b"new"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o444
        assert sorted(os.listdir(folder)) == ["atomic_copy.py", "ro.png"]
    finally:
        request_cleanup()
