"""Random-shift augmentation: the shared shift function, the CNN's on-the-fly shifts and the Toto feature cache's
shifted views (one view per sample in training, the unshifted view in evaluation)."""

import numpy as np
import pytest
import torch

from policies.features import feature_key, feature_store, view_shifts
from policies.train import datasets
from tests.policies.test_bc import CAMS, _policy, make_store
from toto_robot.encoder import StreamingEncoder
from toto_robot.frames import shift_frames
from toto_robot.store import TrajectoryStore


def test_shift_frames_moves_content_and_pads_with_edges():
    frames = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
    out = shift_frames(frames, np.array([[0, 0], [1, -2]]), pad=2)
    assert np.array_equal(out[0], frames[0])  # zero shift: unchanged
    # shift (dy, dx) = (1, -2): output row r, column c shows input row r + 1, column c - 2 (edge-padded)
    assert np.array_equal(out[1][:5, 2:], frames[1][1:, :4])
    assert np.array_equal(out[1][5, 2:], frames[1][5, :4])  # the row below the image repeats its last row
    assert np.array_equal(out[1][:5, 0], frames[1][1:, 0])  # columns left of the image repeat its first column
    with pytest.raises(ValueError, match=r"within \[-pad, pad\]"):
        shift_frames(frames, np.array([[3, 0], [0, 0]]), pad=2)
    with pytest.raises(ValueError, match="expected shape"):
        shift_frames(frames, np.zeros((3, 2), int), pad=2)


def test_augment_config_is_checked(encoder_ckpt):
    with pytest.raises(ValueError, match="augment_views"):
        _policy(encoder_ckpt, augment_views=3)  # views without a shift
    with pytest.raises(ValueError, match="augment_views"):
        _policy(encoder_ckpt, backbone="cnn", shift_augment=4, augment_views=2)  # the CNN shifts on the fly
    with pytest.raises(ValueError, match="cache_dtype"):
        _policy(encoder_ckpt, cache_dtype="int8")


def test_cnn_shifts_training_images_only(encoder_ckpt):
    policy = _policy(encoder_ckpt, backbone="cnn", shift_augment=4)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3), dtype=np.uint8))
    policy.train()
    torch.manual_seed(0)
    assert not torch.equal(policy.augment_images(images), images)
    policy.eval()
    assert torch.equal(policy.augment_images(images), images)


def test_cache_views_and_view_choice(encoder_ckpt, tmp_path):
    store_path = make_store(tmp_path / "demo.zarr", n_episodes=2, steps=6)
    policy = _policy(encoder_ckpt, shift_augment=4, augment_views=3, cache_dtype="float16")
    plain = feature_store(store_path, policy.encoder, CAMS, 2, progress=False)
    views = feature_store(store_path, policy.encoder, CAMS, 2, progress=False, views=3, shift=4, dtype="float16")
    assert views != plain  # a different cache: the key holds views, shift and dtype
    cache, base = TrajectoryStore.open(views), TrajectoryStore.open(plain)
    fk = feature_key(CAMS[0])
    v, b = cache.episode(1)[fk], base.episode(1)[fk]
    assert v.dtype == np.float16 and v.shape == (6, 3, *b.shape[1:])
    np.testing.assert_allclose(v[:, 0].astype(np.float32), b, atol=2e-2, rtol=1e-2)  # view 0: unshifted frames
    assert np.abs(v[:, 1].astype(np.float32) - b).max() > 1e-2  # the other views saw shifted frames
    # view k of a frame is the streaming encoder on that view's frames: recompute view 2 of episode 1 by hand
    ep = TrajectoryStore.open(store_path).episode(1)
    stream = StreamingEncoder(policy.encoder, window=2)
    shifts = view_shifts(1, 2, len(ep[CAMS[0]]), 4)
    frames = shift_frames(ep[CAMS[0]], shifts, 4)
    ref = torch.stack([stream.step(torch.from_numpy(frames[t][None])).features[0, 0] for t in range(len(frames))])
    np.testing.assert_allclose(v[:, 2].astype(np.float32), ref.numpy(), atol=2e-2, rtol=1e-2)

    # training reads the views at random, evaluation reads view 0
    policy.set_stats(TrajectoryStore.open(store_path).stats)
    train, _ = datasets(policy, store_path, val_ratio=0.0, seed=0, progress=False)
    batch = torch.utils.data.default_collate([train[i] for i in range(6)])
    assert batch[fk].shape[2] == 3
    policy.eval()
    cams, _ = policy._step_inputs(batch, 0)
    assert torch.equal(cams[0], batch[fk][:, 0, 0].float())
    policy.train()
    torch.manual_seed(1)
    cams, _ = policy._step_inputs(batch, 0)
    picked = [next(k for k in range(3) if torch.equal(cams[0][i], batch[fk][i, 0, k].float())) for i in range(6)]
    assert len(set(picked)) > 1
    loss, _ = policy(batch)
    loss.backward()
