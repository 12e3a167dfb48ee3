"""Read-out from several encoder layers (`encoder_layer: [2, 4]`): the layers' features concatenated along
channels per token, on every path: the feature cache (and its shifted views), training, acting through the
streaming encoder, and checkpoints."""

import json
import re

import numpy as np
import pytest
import torch

from policies.bc import BCPolicy
from policies.features import feature_key, feature_store, layer_features
from policies.train import TrainConfig, datasets, train_bc
from tests.policies.test_bc import CAMS, _assert_same_actions, _policy, make_store
from toto_robot.store import TrajectoryStore

LAYERS = [2, 4]  # of the tiny preset's 4 blocks


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "demo.zarr", n_episodes=3, steps=8)


def test_features_are_the_layers_side_by_side(encoder_ckpt, small_store):
    """The cache holds (P, 2C) per frame: block 2's features, then block 4's, each exactly what a single-layer
    policy caches; the read-out sees twice the channels."""
    multi = _policy(encoder_ckpt, encoder_layer=LAYERS, readout="flatten", flatten_channels=4)
    singles = [_policy(encoder_ckpt, encoder_layer=k) for k in LAYERS]
    c = multi.encoder.dim
    assert multi.encoder.layer == 4 and multi.encoder.n_kept == 4
    assert multi.readouts[CAMS[0].replace(".", "_")].pool.norm.normalized_shape == (2 * c,)
    multi.set_stats(TrajectoryStore.open(small_store).stats)
    train, _ = datasets(multi, small_store, val_ratio=0.0, seed=0, progress=False)
    batch = torch.utils.data.default_collate([train[i] for i in range(4)])
    fk = feature_key(CAMS[0])
    assert batch[fk].shape == (4, 1, multi.encoder.cfg.tokens_per_frame, 2 * c)
    cache = TrajectoryStore.open(feature_store(small_store, multi.encoder, CAMS, 2, progress=False, layers=LAYERS))
    assert cache.attrs["layer"] == LAYERS
    for j, single in enumerate(singles):
        ref = TrajectoryStore.open(feature_store(small_store, single.encoder, CAMS, 2, progress=False))
        assert ref.attrs["layer"] == LAYERS[j]
        np.testing.assert_allclose(cache.episode(1)[fk][..., j * c:(j + 1) * c], ref.episode(1)[fk], atol=1e-6)
    loss, _ = multi(batch)
    loss.backward()


def test_cache_key_holds_the_layers(encoder_ckpt, small_store):
    multi = _policy(encoder_ckpt, encoder_layer=LAYERS)
    single_top = _policy(encoder_ckpt, encoder_layer=4)  # the same encoder weights: only the read-out differs
    paths = {feature_store(small_store, multi.encoder, CAMS, 2, progress=False, layers=LAYERS),
             feature_store(small_store, multi.encoder, CAMS, 2, progress=False, layers=[4]),
             feature_store(small_store, multi.encoder, CAMS, 2, progress=False, layers=[1, 2, 3]),
             feature_store(small_store, _policy(encoder_ckpt, encoder_layer=2).encoder, CAMS, 2, progress=False)}
    assert len(paths) == 4
    # one layer keeps the key a single-layer cache always had
    assert feature_store(small_store, single_top.encoder, CAMS, 2, progress=False) in paths
    with pytest.raises(ValueError, match=r"layers: expected increasing, distinct blocks in 1..4.*got \[2, 5\]"):
        feature_store(small_store, multi.encoder, CAMS, 2, progress=False, layers=[2, 5])


def test_shifted_views_hold_every_layer(encoder_ckpt, small_store):
    policy = _policy(encoder_ckpt, encoder_layer=LAYERS, shift_augment=4, augment_views=2)
    plain = TrajectoryStore.open(feature_store(small_store, policy.encoder, CAMS, 2, progress=False, layers=LAYERS))
    views = TrajectoryStore.open(feature_store(small_store, policy.encoder, CAMS, 2, progress=False, views=2,
                                               shift=4, layers=LAYERS))
    fk = feature_key(CAMS[1])
    v, p = views.episode(0)[fk], plain.episode(0)[fk]
    assert v.shape == (8, 2, *p.shape[1:]) and p.shape[-1] == 2 * policy.encoder.dim
    np.testing.assert_allclose(v[:, 0], p, atol=1e-6)  # view 0: the unshifted frames
    assert np.abs(v[:, 1] - p).max() > 1e-2


def test_streaming_features_equal_the_full_forward(encoder_ckpt, small_store):
    """Until the window slides the streaming encoder is the plain causal forward: acting reads the same
    concatenated features as a forward pass over the episode's first `window` frames."""
    window = 4
    policy = _policy(encoder_ckpt, encoder_layer=LAYERS, encoder_window=window).eval()
    ep = TrajectoryStore.open(small_store).episode(2)
    full = layer_features(policy.encoder, policy.encoder, torch.from_numpy(ep[CAMS[0]][None, :window]),
                          LAYERS)[0]  # (window, P, 2C)
    policy.reset()
    for t in range(window):
        live = policy._stream_features([ep[c][t] for c in CAMS])
        assert live[0].shape == (1, *full.shape[1:])
        np.testing.assert_allclose(live[0][0].numpy(), full[t].numpy(), atol=1e-5)
    cache = TrajectoryStore.open(feature_store(small_store, policy.encoder, CAMS, window, progress=False,
                                               layers=LAYERS))
    np.testing.assert_allclose(cache.episode(2)[feature_key(CAMS[0])][:window], full.numpy(), atol=1e-5)


def test_multilayer_policy_trains_saves_and_acts_identically(encoder_ckpt, small_store, tmp_path):
    torch.manual_seed(0)
    policy = _policy(encoder_ckpt, encoder_layer=LAYERS, readout="flatten", flatten_channels=4)
    res = train_bc(policy, small_store, TrainConfig(steps=120, batch_size=16, lr=3e-3, warmup=5, eval_every=120,
                                                    log_every=5, val_ratio=0.34), tmp_path / "run", progress=False)
    losses = [h["loss"] for h in res["history"]["train"]]
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:2]), losses
    assert res["history"]["eval"][-1]["val_loss"] is not None
    saved = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert saved["policy"]["encoder_layer"] == LAYERS
    loaded = BCPolicy.load(res["last"])
    assert loaded.cfg.encoder_layers == (2, 4) and loaded.encoder.n_kept == 4
    _assert_same_actions(policy, loaded, TrajectoryStore.open(small_store).episode(0))


@pytest.mark.parametrize("layers, why", [([2, 5], "out of range"), ([0, 2], "the token embedding is no block"),
                                         ([2, 2], "duplicate"), ([4, 2], "not increasing"), ([], "empty")])
def test_bad_layers_are_rejected(encoder_ckpt, layers, why):
    with pytest.raises(ValueError, match=r"PolicyConfig.encoder_layer: expected 1..4 .* without duplicates, got "
                                         + re.escape(str(layers))):
        _policy(encoder_ckpt, encoder_layer=layers)
