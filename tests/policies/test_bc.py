import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.bc import BCPolicy, PolicyConfig, build_policy
from policies.features import feature_chunk_steps, feature_key, feature_store
from policies.train import TrainConfig, _loader, datasets, train_bc
from toto_robot.store import TrajectoryStore
from toto_robot.synthetic import moving_squares

CAMS = ("agentview_image", "robot0_eye_in_hand_image")
PROPRIO = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


def make_store(path, n_episodes=3, steps=10, seed=0):
    """Synthetic episodes whose actions are a fixed function of proprio, so they can be learned."""
    rng = np.random.default_rng(seed)
    schema = {c: ((64, 64, 3), "uint8") for c in CAMS} | {k: ((d,), "float32") for k, d in PROPRIO.items()}
    schema["action"] = ((7,), "float32")
    schema["object"] = ((5,), "float32")  # privileged object state, as collection stores it
    store = TrajectoryStore.create(path, schema, {"fps": 20})
    for e in range(n_episodes):
        video = moving_squares(1, steps, seed=seed + e)[0]
        data = {c: video for c in CAMS}
        data |= {k: rng.normal(size=(steps, d)).astype(np.float32) for k, d in PROPRIO.items()}
        data["action"] = np.tanh(np.concatenate([data["robot0_eef_pos"], data["robot0_eef_quat"]], 1)).astype(np.float32)
        data["object"] = rng.normal(size=(steps, 5)).astype(np.float32)
        store.add_episode(data, {"task": "synthetic", "seed": e, "success": True, "source": "test"})
    store.compute_stats()
    return path


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("store") / "demo.zarr")


def _policy(encoder_ckpt, **kw):
    node = {"backbone": "toto", "head": "mlp", "chunk": 4, "n_action_steps": 2, "hidden": 32, "encoder_window": 2} | kw
    return build_policy(node, encoder_ckpt, CAMS, 64)


@pytest.mark.parametrize("backbone, head", [("toto", "mlp"), ("toto", "act"), ("toto_random", "mlp"), ("cnn", "mlp")])
def test_forward_backward_shapes(encoder_ckpt, store_path, backbone, head):
    policy = _policy(encoder_ckpt, backbone=backbone, head=head)
    policy.set_stats(TrajectoryStore.open(store_path).stats)
    train, _val = datasets(policy, store_path, val_ratio=0.34, seed=0, progress=False)
    batch = torch.utils.data.default_collate([train[i] for i in range(5)])
    assert batch["action"].shape == (5, 4, 7)
    loss, metrics = policy(batch)
    assert loss.ndim == 0 and set(metrics) >= {"loss", "l1_first_action"}
    loss.backward()
    grads = {n for n, p in policy.named_parameters() if p.grad is not None}
    assert grads and not any(n.startswith("encoder.") for n in grads)  # the Toto encoder stays frozen
    if backbone == "cnn":
        assert any(n.startswith("cnn.") for n in grads)
    policy.eval()
    obs = {c: np.zeros((64, 64, 3), np.uint8) for c in CAMS} | {k: np.zeros(d, np.float32) for k, d in PROPRIO.items()}
    assert policy.predict_action_chunk(obs).shape == (4, 7)
    assert policy.select_action(obs).shape == (7,)


def _assert_same_actions(policy, loaded, ep, privileged=False, steps=6):
    """A policy and its saved-and-loaded copy choose identical, finite actions on an episode's observations."""
    policy.eval()
    for p in (policy, loaded):
        p.reset()
    for t in range(steps):
        obs = {k: ep[k][t] for k in (*CAMS, *PROPRIO)}
        if privileged:  # the runner's privileged state; only the `state` backbone reads it
            obs["privileged"] = {"object": ep["object"][t]}
        a, b = policy.select_action(obs), loaded.select_action(obs)
        assert a.shape == (7,) and np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)


def test_toto_random_differs_from_pretrained_only_in_transformer(encoder_ckpt):
    a, b = _policy(encoder_ckpt), _policy(encoder_ckpt, backbone="toto_random")
    assert torch.equal(a.encoder.tokenizer.encoder.net[0].weight, b.encoder.tokenizer.encoder.net[0].weight)
    assert not torch.equal(a.encoder.model.layers[0].attn.wqkv.weight, b.encoder.model.layers[0].attn.wqkv.weight)


def test_save_load_gives_identical_actions(encoder_ckpt, store_path, tmp_path):
    policy = _policy(encoder_ckpt, head="act", temporal_ensemble=0.1, n_action_steps=1)
    policy.set_stats(TrajectoryStore.open(store_path).stats)
    policy.save(tmp_path / "p")
    loaded = BCPolicy.load(tmp_path / "p")
    _assert_same_actions(policy, loaded, TrajectoryStore.open(store_path).episode(0))
    cfg = __import__("json").loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["policy"]["encoder_checkpoint"] == str(encoder_ckpt)


def test_action_queue_and_ensembling(encoder_ckpt):
    obs = {c: np.zeros((64, 64, 3), np.uint8) for c in CAMS} | {k: np.zeros(d, np.float32) for k, d in PROPRIO.items()}
    p = _policy(encoder_ckpt, chunk=4, n_action_steps=2).eval()
    chunk = p.predict_action_chunk(obs)
    p.reset()
    first, second = p.select_action(obs), p.select_action(obs)
    np.testing.assert_allclose(first, chunk[0], atol=1e-6)
    np.testing.assert_allclose(second, chunk[1], atol=1e-6)  # from the queue, not a new prediction
    with pytest.raises(ValueError, match="missing"):
        p.select_action({"robot0_eef_pos": np.zeros(3)})
    p.train()
    with pytest.raises(RuntimeError, match="eval"):
        p.select_action(obs)


def test_cached_features_equal_streaming_features_at_inference(encoder_ckpt, store_path):
    policy = _policy(encoder_ckpt, encoder_window=2).eval()
    cache = TrajectoryStore.open(feature_store(store_path, policy.encoder, CAMS, 2, progress=False))
    ep = TrajectoryStore.open(store_path).episode(1)
    cached = cache.episode(1)
    policy.reset()
    for t in range(5):
        live = policy._stream_features([ep[c][t] for c in CAMS])
        for cam, f in zip(CAMS, live):
            np.testing.assert_allclose(f[0].numpy(), cached[f"features.{cam}"][t], atol=1e-5)
    np.testing.assert_array_equal(cached["action"], ep["action"])


def test_observe_advances_the_stream_like_a_prediction(encoder_ckpt, store_path):
    """A frame given to `observe` (one the control loop does not act on) leaves the same temporal context
    as predicting from it; without it, the context differs."""
    policy = _policy(encoder_ckpt, encoder_window=2).eval()
    ep = TrajectoryStore.open(store_path).episode(0)
    obs = [{k: ep[k][t] for k in (*CAMS, *PROPRIO)} for t in range(3)]

    def last_chunk(steps):
        policy.reset()
        for kind, o in steps:
            out = policy.predict_action_chunk(o) if kind == "predict" else policy.observe(o)
        return out

    every = last_chunk([("predict", obs[0]), ("predict", obs[1]), ("predict", obs[2])])
    observed = last_chunk([("predict", obs[0]), ("observe", obs[1]), ("predict", obs[2])])
    skipped = last_chunk([("predict", obs[0]), ("predict", obs[2])])
    np.testing.assert_allclose(observed, every, atol=1e-6)
    assert np.abs(skipped - every).max() > 1e-4
    with pytest.raises(ValueError, match="missing"):
        policy.observe({"robot0_eef_pos": np.zeros(3)})


def test_feature_cache_reuse_and_invalidation(encoder_ckpt, store_path, tmp_path):
    policy = _policy(encoder_ckpt)
    a = feature_store(store_path, policy.encoder, CAMS, 2, progress=False)
    mtime = (a / "meta").stat().st_mtime_ns
    assert feature_store(store_path, policy.encoder, CAMS, 2, progress=False) == a
    assert (a / "meta").stat().st_mtime_ns == mtime  # reused, not recomputed
    assert feature_store(store_path, policy.encoder, CAMS, 3, progress=False) != a  # window changed
    other_layer = _policy(encoder_ckpt, encoder_layer=1)
    assert feature_store(store_path, other_layer.encoder, CAMS, 2, progress=False) != a  # layer changed
    retrained = _policy(encoder_ckpt)
    with torch.no_grad():
        retrained.encoder.model.layers[0].ffn.w1.weight.add_(0.01)  # different weights
    assert feature_store(store_path, retrained.encoder, CAMS, 2, progress=False) != a
    with pytest.raises(ValueError, match="not image keys"):
        feature_store(store_path, policy.encoder, ("wrist",), 2, progress=False)


def test_two_trainers_filling_one_cache_append_each_episode_once(encoder_ckpt, tmp_path, monkeypatch):
    """Two trainers on one store at once: the second computes the whole cache while the first is encoding
    episode 1. The first then writes neither episode 1 (computed, but already appended) nor episode 2 (seen on
    refresh), and the cache equals one computed alone."""
    store = make_store(tmp_path / "demo.zarr")
    alone = make_store(tmp_path / "alone.zarr")
    policy = _policy(encoder_ckpt)
    reference = TrajectoryStore.open(feature_store(alone, policy.encoder, CAMS, 2, progress=False))
    episode, other_ran = TrajectoryStore.episode, []

    def episode_with_a_rival(self, i, *args, **kw):
        if Path(self.path) == store and i == 1 and not other_ran:
            other_ran.append(True)
            feature_store(store, policy.encoder, CAMS, 2, progress=False)  # the other trainer, start to end
        return episode(self, i, *args, **kw)

    monkeypatch.setattr(TrajectoryStore, "episode", episode_with_a_rival)
    cache = TrajectoryStore.open(feature_store(store, policy.encoder, CAMS, 2, progress=False))
    assert other_ran and cache.n_episodes == 3 and cache.n_steps == reference.n_steps
    for i in range(3):
        for cam in CAMS:
            np.testing.assert_array_equal(cache.episode(i)[feature_key(cam)], reference.episode(i)[feature_key(cam)])


def test_bad_policy_config(encoder_ckpt, tmp_path):
    with pytest.raises(ValueError, match="backbone"):
        _policy(encoder_ckpt, backbone="resnet")
    with pytest.raises(ValueError, match="head"):
        _policy(encoder_ckpt, head="transformer")
    with pytest.raises(ValueError, match="readout: expected one of"):
        _policy(encoder_ckpt, readout="max")
    with pytest.raises(ValueError, match="n_obs_steps"):
        _policy(encoder_ckpt, head="act", n_obs_steps=2)
    with pytest.raises(ValueError, match="object-state keys"):
        build_policy({"backbone": "state", "object_keys": ["object"]}, None, CAMS, 64, low_dim_sizes={})
    with pytest.raises(ValueError, match="layer: expected 1..4"):
        _policy(encoder_ckpt, encoder_layer=5)
    with pytest.raises(ValueError, match="n_action_steps"):
        _policy(encoder_ckpt, chunk=2, n_action_steps=3)
    with pytest.raises(ValueError, match="encoder checkpoint"):
        build_policy({"backbone": "toto"}, tmp_path, CAMS, 64)
    with pytest.raises(ValueError, match="32 px"):
        build_policy({"backbone": "toto"}, encoder_ckpt, CAMS, 32)
    with pytest.raises(ValueError, match="backbone 'toto' needs"):
        PolicyConfig(backbone="toto")


def test_tiny_bc_run_drives_loss_down(encoder_ckpt, store_path, tmp_path):
    policy = _policy(encoder_ckpt)
    evals = []

    def evaluate(p, step):
        evals.append(step)
        return {"success_rate": 0.5}

    res = train_bc(policy, store_path, TrainConfig(steps=150, batch_size=16, lr=3e-3, warmup=10, eval_every=75,
                                                   log_every=10, val_ratio=0.34), tmp_path / "run",
                   evaluate=evaluate, progress=False)
    losses = [h["loss"] for h in res["history"]["train"]]
    assert losses[-1] < 0.7 * losses[0], losses
    assert evals == [75, 150]
    assert (tmp_path / "run" / "best" / "policy.safetensors").is_file()
    assert (tmp_path / "run" / "last" / "config.json").is_file()
    assert list((tmp_path / "run" / "tb").glob("events.*"))


VARIANTS = [
    {"readout": "mean"},
    {"readout": "attentive", "position_embedding": True},
    {"readout": "multiquery", "n_queries": 3},
    {"readout": "spatial_softmax", "n_keypoints": 8},
    {"readout": "flatten", "flatten_channels": 4},
    {"head": "act", "position_embedding": True, "n_action_steps": 1},
    {"head": "diffusion", "chunk": 8, "n_obs_steps": 2, "n_action_steps": 4,
     "diffusion": {"down_dims": [16, 32], "n_groups": 4, "step_embed_dim": 16, "num_inference_steps": 4}},
    {"head": "diffusion", "readout": "flatten", "flatten_channels": 4, "shift_augment": 4, "augment_views": 2,
     "chunk": 8, "n_obs_steps": 2, "n_action_steps": 4,
     "diffusion": {"down_dims": [16, 32], "n_groups": 4, "step_embed_dim": 16, "num_inference_steps": 4}},
    {"backbone": "state", "object_keys": ["object"]},
    {"backbone": "cnn", "readout": "spatial_softmax", "n_keypoints": 8},
    {"backbone": "cnn", "head": "diffusion", "chunk": 8, "n_obs_steps": 2, "n_action_steps": 4,
     "diffusion": {"down_dims": [16, 32], "n_groups": 4, "step_embed_dim": 16, "num_inference_steps": 4}},
]


def _variant(encoder_ckpt, **kw):
    node = {"backbone": "toto", "head": "mlp", "chunk": 4, "n_action_steps": 2, "hidden": 32, "encoder_window": 2} | kw
    return build_policy(node, encoder_ckpt, CAMS, 64, low_dim_sizes={"object": 5, **PROPRIO})


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items() if k != "diffusion"))
def test_readouts_heads_and_state_train_save_and_act_identically(encoder_ckpt, store_path, tmp_path, kw):
    """Each read-out / head / backbone: the loss falls on a handful of episodes, gradients reach what should
    train and never the frozen encoder, and a saved policy acts exactly like the one in memory."""
    torch.manual_seed(0)
    policy = _variant(encoder_ckpt, **kw)
    res = train_bc(policy, store_path, TrainConfig(steps=120, batch_size=16, lr=3e-3, warmup=5, eval_every=120,
                                                   log_every=5, val_ratio=0.34), tmp_path / "run", progress=False)
    losses = [h["loss"] for h in res["history"]["train"]]
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:2]), losses
    loaded = BCPolicy.load(res["last"])
    _assert_same_actions(policy, loaded, TrajectoryStore.open(store_path).episode(0), privileged=True)
    assert policy.uses_privileged_state == (kw.get("backbone") == "state")


def test_state_policy_reads_object_state_not_images(encoder_ckpt):
    policy = _variant(encoder_ckpt, backbone="state", object_keys=["object"]).eval()
    assert policy.cfg.cameras == () and policy.cfg.low_dim_keys[0] == "object"
    obs = {k: np.zeros(d, np.float32) for k, d in PROPRIO.items()}
    a = policy.predict_action_chunk(obs | {"privileged": {"object": np.zeros(5)}})
    policy.reset()
    b = policy.predict_action_chunk(obs | {"privileged": {"object": np.full(5, 3.0)}})
    assert not np.allclose(a, b)  # the object state changes the action
    with pytest.raises(ValueError, match=r"missing \['object'\]"):
        policy.predict_action_chunk(obs)


def test_diffusion_policy_executes_from_the_current_step(encoder_ckpt):
    """With 2 observation steps a 8-action chunk starts one step in the past: 7 actions from now on."""
    kw = next(v for v in VARIANTS if v.get("head") == "diffusion" and "backbone" not in v)
    policy = _variant(encoder_ckpt, **kw).eval()
    obs = {c: np.zeros((64, 64, 3), np.uint8) for c in CAMS} | {k: np.zeros(d, np.float32) for k, d in PROPRIO.items()}
    assert policy.predict_action_chunk(obs).shape == (7, 7)
    with pytest.raises(ValueError, match="n_action_steps: expected 1..chunk - n_obs_steps \\+ 1 = 7"):
        _variant(encoder_ckpt, **(kw | {"n_action_steps": 8}))


def test_a_saved_policy_needs_no_encoder_checkpoint(encoder_ckpt, tmp_path):
    """The policy checkpoint holds every weight: loading it never reads the encoder checkpoint it names."""
    import shutil

    ckpt = tmp_path / "enc"
    shutil.copytree(encoder_ckpt, ckpt)
    obs = {c: np.zeros((64, 64, 3), np.uint8) for c in CAMS} | {k: np.zeros(d, np.float32) for k, d in PROPRIO.items()}
    for backbone in ("toto", "toto_random"):
        policy = _policy(ckpt, backbone=backbone)
        policy.save(tmp_path / backbone)
    shutil.rmtree(ckpt)
    for backbone in ("toto", "toto_random"):
        loaded = BCPolicy.load(tmp_path / backbone)
        reference = _policy(encoder_ckpt, backbone=backbone).eval()
        np.testing.assert_array_equal(loaded.predict_action_chunk(obs), reference.predict_action_chunk(obs))


def _same_batches(a, b, batch_size, seed, num_workers=0):
    """Both datasets give identical batches, key by key, over two shuffled epochs of the trainer's loader."""
    for epoch in range(2):
        la = _loader(a, batch_size, True, seed + epoch)
        lb = torch.utils.data.DataLoader(b, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(seed + epoch))  # as _loader, with workers
        n = 0
        for x, y in zip(la, lb, strict=True):
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]), k
            n += 1
        assert n == len(a) // batch_size


def test_feature_cache_streams_from_the_store_with_the_in_memory_batches(encoder_ckpt, tmp_path):
    """A feature cache larger than the memory budget is read from zarr window by window (chunks of a few steps),
    and its batches are exactly those of the whole cache loaded into memory, in workers too."""
    store = make_store(tmp_path / "demo.zarr", n_episodes=3, steps=12)
    policy = _policy(encoder_ckpt, n_obs_steps=2, n_action_steps=2)  # 2-step windows may cross a chunk boundary
    policy.set_stats(TrajectoryStore.open(store).stats)
    in_memory, _ = datasets(policy, store, val_ratio=0.34, seed=0, progress=False)
    train, val = datasets(policy, store, val_ratio=0.34, seed=0, progress=False, memory_bytes=0)
    fk = feature_key(CAMS[0])
    assert in_memory.in_memory == "all" and fk not in train.in_memory and fk not in val.in_memory
    assert "action" in train.in_memory  # the few numbers a step stay in memory
    cache = TrajectoryStore.open(train._path)
    steps = cache.array(fk).chunks[0]
    assert steps == feature_chunk_steps(*cache.schema[fk]) and 2 * steps < cache.n_steps  # several chunks
    _same_batches(train, in_memory, batch_size=4, seed=3)
    _same_batches(in_memory, train, batch_size=4, seed=5, num_workers=1)  # a worker reopens the store
    # the features come from the store when read, not from a copy made up front
    ep, _ = train.window(0)
    row = int(cache.episode_ends[ep - 1]) if ep else 0
    array = __import__("zarr").open_array(train._path / "data" / fk, mode="r+")
    array[row] = 7.0
    assert (train[0][fk] == 7.0).any() and not (in_memory[0][fk] == 7.0).any()


def test_a_streamed_cache_with_long_chunks_warns(encoder_ckpt, tmp_path, monkeypatch):
    """A cache written before features streamed (1024-step chunks: a read would decode tens of MiB) still
    trains when streamed, and says how to get the short-chunk layout; loaded into memory it needs no warning."""
    store = make_store(tmp_path / "demo.zarr", n_episodes=2, steps=6)
    policy = _policy(encoder_ckpt)
    policy.set_stats(TrajectoryStore.open(store).stats)
    with monkeypatch.context() as m:
        m.setattr("policies.features.feature_chunk_steps", lambda shape, dtype: 1024)
        feature_store(store, policy.encoder, CAMS, 2, progress=False)
    with pytest.warns(UserWarning, match="long chunks.*recompute"):
        train, _ = datasets(policy, store, val_ratio=0.0, seed=0, progress=False, memory_bytes=0)
    policy(torch.utils.data.default_collate([train[i] for i in range(3)]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, _ = datasets(policy, store, val_ratio=0.0, seed=0, progress=False)
    assert train.in_memory == "all"


def test_every_trainable_policy_config_builds(encoder_ckpt):
    """Each configs/policy/*.yaml that toto-train-bc accepts builds a policy (an unknown field or value fails
    here, not hours into an experiment); the scripted and checkpoint ones are refused with a clear error."""
    import yaml

    from toto_robot.config import _config_dir

    built = []
    for path in sorted((Path(_config_dir()) / "policy").glob("*.yaml")):
        node = yaml.safe_load(path.read_text())
        sizes = {"object": 5} if node.get("backbone") == "state" else None
        if node.get("scripted") or "_target_" in node:
            with pytest.raises(ValueError, match="not a trainable behavior-cloning policy"):
                build_policy(node, encoder_ckpt, CAMS, 64)
            continue
        policy = build_policy(node, encoder_ckpt, CAMS, 64, low_dim_sizes=sizes)
        assert policy.cfg.head == node.get("head", "mlp") and policy.cfg.readout == node.get("readout", "attentive")
        built.append(node["name"])
    assert {"toto_flat_aug", "toto_random_flat_aug", "cnn_diffusion", "toto_flat_multi"} <= set(built)


def test_a_distilled_tokenizer_replaces_the_encoders_and_survives_save_load(encoder_ckpt, store_path, tmp_path):
    from toto_robot.checkpoint import save_tokenizer
    from toto_robot.distill import student_of
    from toto_robot.tokenizer import Tokenizer, tokenizer_preset

    policy = _policy(encoder_ckpt)
    policy.set_stats(TrajectoryStore.open(store_path).stats)
    policy.save(tmp_path / "p")
    torch.manual_seed(1)
    light = student_of(policy.encoder.tokenizer, 8)
    save_tokenizer(tmp_path / "light", light)
    swapped = BCPolicy.load(tmp_path / "p", tokenizer=tmp_path / "light")
    assert swapped.encoder.tokenizer.cfg.encoder == "light"
    ep = TrajectoryStore.open(store_path).episode(0)
    frames = torch.from_numpy(ep[CAMS[0]][None, :2])
    assert torch.equal(swapped.encoder.tokenizer.encode(frames), light.encode(frames))
    swapped.save(tmp_path / "p_light")  # the policy now names the light tokenizer: it reloads as it runs
    _assert_same_actions(swapped, BCPolicy.load(tmp_path / "p_light"), ep)
    other = Tokenizer(tokenizer_preset("tiny", codebook_size=64))  # another codebook: other meanings of the ids
    save_tokenizer(tmp_path / "other", other)
    with pytest.raises(ValueError, match=r"tokenizer .*other: expected the codes of the policy's tokenizer"):
        BCPolicy.load(tmp_path / "p", tokenizer=tmp_path / "other")
