import itertools
import math

import pytest

from toto_robot.schedules import warmup_cosine


def test_schedule_warms_up_then_decays_to_the_floor():
    lrs = [warmup_cosine(s, 10, 100, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))  # after warmup
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1) and lrs[55] == pytest.approx(0.55)


def test_without_warmup_it_is_a_plain_cosine():
    assert [warmup_cosine(s, 0, 8) for s in range(10)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * min(s, 8) / 8)) for s in range(10)])
