"""Per-episode visual randomization: each randomizer changes the frames, the same seed gives the same frames,
and the looks hold for the whole episode."""

import numpy as np
import pytest

from envs.randomization import (
    CameraRandomization,
    LightingRandomization,
    RandomizationConfig,
    RandomizedEnv,
    TextureRandomization,
)

TINY = {"cameras": ("agentview",), "image_size": 32, "horizon": 5}


def first_frame(env: RandomizedEnv, seed: int) -> np.ndarray:
    return env.reset(seed=seed)[0]["agentview_image"].astype(np.int16)


@pytest.fixture(scope="module")
def plain_frames():
    env = RandomizedEnv("Lift", randomization=RandomizationConfig.off(), **TINY)
    try:
        yield {seed: first_frame(env, seed) for seed in (3, 4)}
    finally:
        env.close()


ONLY = {
    "camera": RandomizationConfig(lighting=LightingRandomization(enabled=False),
                                  texture=TextureRandomization(enabled=False)),
    "lighting": RandomizationConfig(camera=CameraRandomization(enabled=False),
                                    texture=TextureRandomization(enabled=False)),
    "texture": RandomizationConfig(camera=CameraRandomization(enabled=False),
                                   lighting=LightingRandomization(enabled=False)),
}


@pytest.mark.render
@pytest.mark.parametrize("kind", list(ONLY))
def test_each_randomizer_changes_the_frames_and_is_seeded(kind, plain_frames):
    env = RandomizedEnv("Lift", randomization=ONLY[kind], **TINY)
    try:
        a, b, a_again = first_frame(env, 3), first_frame(env, 4), first_frame(env, 3)
    finally:
        env.close()
    assert np.abs(a - plain_frames[3]).mean() > 1.0  # this randomizer alone changes the picture
    assert np.abs(b - plain_frames[4]).mean() > 1.0
    np.testing.assert_array_equal(a, a_again)  # the same seed, the same looks, whatever episode came between
    assert a.std() > 10  # still a lit, rendered scene


@pytest.mark.render
def test_two_episodes_of_a_task_look_different_and_each_keeps_its_looks(plain_frames):
    env = RandomizedEnv("Lift", **TINY)  # everything on, the defaults
    try:
        a, b = first_frame(env, 3), first_frame(env, 4)
        frames = [env.step(np.zeros(7, np.float32))[0]["agentview_image"].astype(np.int16) for _ in range(3)]
    finally:
        env.close()
    plain_change = np.abs(plain_frames[3] - plain_frames[4]).mean()  # the cube's placement alone
    assert np.abs(a - b).mean() > 5 * plain_change + 5
    # the arm holds still: the frames of the episode keep the looks of its first frame (seed 4)
    assert max(np.abs(f - b).mean() for f in frames) < 0.2 * np.abs(a - b).mean()


@pytest.mark.parametrize(
    "config, message",
    [
        (lambda: CameraRandomization(position=0, rotation=0, fovy=0), "randomization.camera: enabled with every"),
        (lambda: LightingRandomization(diffuse=-0.1), "randomization.lighting.diffuse: must be >= 0"),
        (lambda: TextureRandomization(strength=1.5), "randomization.texture.strength: must be in [0, 1]"),
        (lambda: TextureRandomization(variations=("plaid",)), "expected a non-empty list from ['rgb'"),
        (lambda: RandomizationConfig(camera={"position": -1}), "randomization.camera.position: must be >= 0"),
    ],
)
def test_bad_settings_are_refused(config, message):
    with pytest.raises(ValueError) as err:
        config()
    assert message in str(err.value)
