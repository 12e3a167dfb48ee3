"""The hydra wiring every command shares (toto_robot/commands/entry.py), run in-process on
configs/collect.yaml (it writes nothing: run dir '.', no .hydra subdir)."""

import pytest
from hydra.errors import InstantiationException

from toto_robot.commands.entry import Stopped, entry_point


def _call(monkeypatch, run, *overrides, errors=()):
    monkeypatch.setattr("sys.argv", ["toto-test", *overrides])
    entry_point("test", "collect", run, errors=errors)()


def test_run_gets_the_composed_config_with_overrides(monkeypatch):
    seen = {}
    _call(monkeypatch, lambda cfg: seen.update(n=cfg.n_episodes, task=cfg.env.task), "n_episodes=3")
    assert seen == {"n": 3, "task": "Lift"}


def _raise(exc):
    def run(cfg):
        raise exc
    return run


def _wrapped():
    try:
        raise ValueError("env.image_size: expected a positive even number, got 7")
    except ValueError as cause:
        raise InstantiationException("Error in call to target 'EnvConfig'") from cause


@pytest.mark.parametrize("run, message", [
    (_raise(ValueError("policy: expected expert, got 'smart'")), "policy: expected expert, got 'smart'"),
    (_raise(FileNotFoundError("no store at /x")), "no store at /x"),
    (_raise(FileExistsError("/x exists")), "/x exists"),
    (_raise(TimeoutError("/x.zarr: locked by pid 7 for 600 s")), "/x.zarr: locked by pid 7 for 600 s"),
    (lambda cfg: _wrapped(), "env.image_size: expected a positive even number, got 7"),
])
def test_bad_input_is_one_line_and_status_2(monkeypatch, capsys, run, message):
    with pytest.raises(SystemExit) as exit_:
        _call(monkeypatch, run)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"toto-test: error: {message}\n"


def test_extra_errors_and_interrupt(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        _call(monkeypatch, _raise(KeyError("wrist_image")), errors=(KeyError,))
    assert exit_.value.code == 2 and capsys.readouterr().err == "toto-test: error: 'wrist_image'\n"
    with pytest.raises(SystemExit) as exit_:
        _call(monkeypatch, _raise(KeyboardInterrupt()))
    assert exit_.value.code == 130 and capsys.readouterr().err == "toto-test: interrupted\n"


def test_a_stop_is_status_3_and_a_bad_override_status_2(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        _call(monkeypatch, _raise(Stopped("episode 0 stopped (held for more than 1.0 s)")))
    assert exit_.value.code == 3
    assert capsys.readouterr().err == "toto-test: stopped: episode 0 stopped (held for more than 1.0 s)\n"
    with pytest.raises(SystemExit) as exit_:
        _call(monkeypatch, lambda cfg: None, "n_episodez=3")
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("toto-test: error: override 'n_episodez=3': expected a key of "
                                       "configs/collect.yaml, found no key 'n_episodez' (to add a new key: "
                                       "+n_episodez=3)\n")


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # hydra re-raises instead of printing its short report
    with pytest.raises(KeyError):
        _call(monkeypatch, _raise(KeyError("not listed in errors")))
