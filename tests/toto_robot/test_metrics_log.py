import json

from toto_robot.metrics_log import MetricsLog


def _steps(path):
    return [json.loads(r)["step"] for r in path.read_text().splitlines()]


def test_rows_are_appended_and_a_resume_keeps_the_rows_up_to_its_step(tmp_path):
    with MetricsLog(tmp_path, tensorboard=False) as log:
        for step in range(1, 6):
            log.log({"step": step, "loss": 1.0 / step, "held_out_loss": None})
    assert _steps(log.path) == [1, 2, 3, 4, 5]
    with MetricsLog(tmp_path, start_step=3, tensorboard=False) as log:
        log.log({"step": 4, "loss": 0.3})
    assert _steps(log.path) == [1, 2, 3, 4]
    MetricsLog(tmp_path, tensorboard=False).close()  # a fresh run starts a fresh log
    assert log.path.read_text() == ""


def test_tensorboard_scalars_carry_the_prefix_and_skip_none(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLog(tmp_path, prefix="tokenizer/") as log:
        log.log({"step": 1, "psnr": 20.0, "held_out_loss": None})
        log.log({"step": 2, "psnr": 21.0, "held_out_loss": None})
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert events.Tags()["scalars"] == ["tokenizer/psnr"]
    assert [e.step for e in events.Scalars("tokenizer/psnr")] == [1, 2]
