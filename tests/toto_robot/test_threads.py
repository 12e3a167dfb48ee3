"""The thread policy: an explicit count wins over TOTO_THREADS over OMP_NUM_THREADS over the default, the count
is applied and returned, and oversubscription is never silent."""

import logging

import pytest
import torch

from toto_robot.threads import ENV_VAR, configure_threads, default_threads, resolve_threads


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    n = torch.get_num_threads()
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    torch.set_num_threads(n)


def test_default_is_half_the_cores_at_least_one():
    assert default_threads(2) == 1 and default_threads(1) == 1 and default_threads(16) == 8
    n, source = resolve_threads(None)
    assert n == default_threads() and source.startswith("default")


def test_explicit_beats_env_beats_omp(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert resolve_threads(None) == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv(ENV_VAR, "2")
    assert resolve_threads(None) == (2, ENV_VAR)
    assert resolve_threads(1) == (1, "explicit")


def test_configure_applies_and_returns_the_count():
    assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    assert configure_threads(2) == 2 and torch.get_num_threads() == 2


def test_oversubscription_is_logged(caplog, monkeypatch):
    monkeypatch.setattr("toto_robot.threads.usable_cores", lambda: 2)
    with caplog.at_level(logging.WARNING, logger="toto_robot.threads"):
        configure_threads(4)
    assert "oversubscribes" in caplog.text


@pytest.mark.parametrize("bad", [0, -1, "2", 1.5, True])
def test_bad_counts(bad, monkeypatch):
    with pytest.raises(ValueError, match="threads: expected a positive integer"):
        resolve_threads(bad)
    monkeypatch.setenv(ENV_VAR, "many")
    with pytest.raises(ValueError, match=f"{ENV_VAR}: expected a positive integer"):
        resolve_threads(None)
