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
