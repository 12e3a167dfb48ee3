import pytest

from toto_robot import atomic
from toto_robot.atomic import atomic_write_bytes, atomic_write_text


def test_write_then_replace_leaves_only_the_target(tmp_path):
    path = tmp_path / "progress.json"
    assert atomic_write_text(path, "one\n") == path and path.read_text() == "one\n"
    atomic_write_bytes(path, b"two\n")
    assert path.read_bytes() == b"two\n"
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "stage.json"
    path.write_text("old\n")

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["stage.json"]


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """SIGKILL leaves `.<name>.tmp-<host>-<pid>`; the next write removes it when that pid no longer runs, and
    leaves a running writer's (and another host's) alone."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    path = tmp_path / "progress.json"
    code = ("import pathlib, time; from toto_robot import atomic\n"
            "def hang(a, b): print('written', flush=True); time.sleep(60)\n"
            "atomic.os.replace = hang\n"
            f"atomic.atomic_write_text(pathlib.Path({str(path)!r}), 'killed\\n')\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"  # its temporary is on disk, the rename not yet done
    stale = tmp_path / f".progress.json.tmp-{socket.gethostname()}-{proc.pid}"
    assert stale.read_text() == "killed\n"
    live = tmp_path / f".progress.json.tmp-{socket.gethostname()}-{os.getppid()}"  # a writer still running
    other = tmp_path / f".progress.json.tmp-otherhost-{proc.pid}"
    live.write_text("busy")
    other.write_text("elsewhere")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    atomic_write_text(path, "next\n")
    assert path.read_text() == "next\n" and not stale.exists() and live.exists() and other.exists()
