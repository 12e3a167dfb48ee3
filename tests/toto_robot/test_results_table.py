import json

import pytest

from toto_robot.commands.results_table import main, read_records, rows
from toto_robot.results import wilson_interval


def _record(folder, name, seed, rate, n=50, task="PickPlaceCan", encoder="toto"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}-{name}-seed{seed}.json"
    path.write_text(json.dumps({"task": task, "policy": name, "encoder": encoder, "preset": "tiny", "bc_seed": seed,
                                "n_episodes": n, "success_rate": rate}))
    return path


def test_records_of_one_policy_become_one_row_with_the_pooled_interval(tmp_path):
    _record(tmp_path / "a", "toto_flat_multi", 1, 0.92)
    _record(tmp_path / "a", "toto_flat_multi", 0, 0.86)
    _record(tmp_path / "b", "cnn_aug", 0, 0.90, encoder="cnn")
    _record(tmp_path / "b", "cnn_aug", 0, 0.50, task="Lift", encoder="cnn")
    (tmp_path / "b" / "probe.json").write_text(json.dumps({"r2": 0.9}))  # not a BC record: skipped
    records, skipped = read_records([tmp_path])
    assert (len(records), skipped) == (4, 1)
    table = {(r["task"], r["policy"]): r for r in rows(records)}
    assert len(table) == 3
    toto = table[("PickPlaceCan", "toto_flat_multi")]
    assert toto["seeds"] == [0, 1] and toto["success"] == [0.86, 0.92]
    assert toto["mean"] == pytest.approx(0.89) and toto["episodes"] == 100
    assert toto["ci95"] == wilson_interval(89, 100)


def test_command_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    _record(tmp_path, "toto_flat_multi", 0, 0.86)
    _record(tmp_path, "cnn_aug", 0, 0.90, encoder="cnn")
    _record(tmp_path, "cnn_aug", 0, 0.40, task="Lift", encoder="cnn")
    plot, md = tmp_path / "out" / "can.png", tmp_path / "out" / "can.md"
    assert main([str(tmp_path), "--task", "PickPlaceCan", "--plot", str(plot), "--markdown", str(md)]) == 0
    out = capsys.readouterr().out
    assert "| PickPlaceCan | `toto_flat_multi` | toto (tiny) | 0 | 86% | **86%** |" in out
    assert "Lift" not in out and md.read_text() == out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path), "--policy", "cnn*"]) == 0
    out = capsys.readouterr().out
    assert "`cnn_aug`" in out and "toto_flat_multi" not in out


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2  # an empty folder: no records
    assert "no behavior-cloning records" in capsys.readouterr().err
    _record(tmp_path, "cnn", 0, 0.5)
    assert main([str(tmp_path), "--policy", "toto*"]) == 2
    assert "of policies ['toto*']" in capsys.readouterr().err
    bad = _record(tmp_path, "x", 0, 1.5)
    assert main([str(bad)]) == 2
    assert f"{bad} has success_rate 1.5" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main([str(bad)]) == 2
    assert f"{bad} is not JSON" in capsys.readouterr().err


def test_write_record_refuses_a_key_the_run_context_would_replace(tmp_path):
    from toto_robot.results import run_context, write_record
    context = run_context()
    path = tmp_path / "r.json"
    with pytest.raises(ValueError, match=r"write_record .*r\.json.*\['threads'\]"):
        write_record(path, {"threads": {"tiny/busy/threads=1": 5.0}}, context)
    assert not path.exists()
    write_record(path, {"threads": context["threads"], "figure": 1.0}, context)  # the same value: kept once
    assert json.loads(path.read_text())["figure"] == 1.0
