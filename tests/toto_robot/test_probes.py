"""Probes (toto_robot/probes, toto-probe): heads, label propagation and its DAVIS scores, the one-pass
all-layer extraction, the feature cache, the users' data layouts and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.toto_robot.helpers import moving_squares, tiny_models
from toto_robot.checkpoint import save_tokenizer
from toto_robot.commands.entry import EXIT_BAD_INPUT
from toto_robot.commands.probe import main as probe_main
from toto_robot.encoder import StreamingEncoder, TotoEncoder, save_toto
from toto_robot.probes.features import (
    EncoderSource,
    FeatureCache,
    PixelMotionSource,
    PixelSource,
    all_layer_features,
    motion_tokens,
)
from toto_robot.probes.heads import AttentiveConfig, HeadConfigs, KnnConfig, LinearConfig, head_accuracy
from toto_robot.probes.image import digits
from toto_robot.probes.tracking import (
    PROPAGATION_SETTINGS,
    boundary_f,
    moving_objects,
    propagate,
    region_similarity,
    score_video,
    summarise,
)
from toto_robot.probes.video import moving_shapes
from toto_robot.video import write_mp4


# ---------------------------------------------------------------- heads
def separable_tokens(n: int, n_classes: int = 4, p: int = 8, c: int = 16, seed: int = 0):
    """(N, P, C) noise tokens; two tokens of each row carry its class's direction."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_classes, c, generator=g) * 2
    y = torch.arange(n) % n_classes
    x = torch.randn(n, p, c, generator=g)
    x[:, :2] += directions[y][:, None]
    return x.half(), y.numpy()


@pytest.mark.parametrize("head", ["attentive", "linear", "knn"])
def test_each_head_learns_a_separable_task(head):
    x, y = separable_tokens(240)
    cfgs = HeadConfigs(AttentiveConfig(epochs=10, batch_size=32), LinearConfig(), KnnConfig())
    acc = head_accuracy(head, x[:160], y[:160], x[160:], y[160:], 4, cfgs, seed=0)
    assert acc >= 0.9, (head, acc)  # chance is 0.25
    # the labels, shuffled against the tokens, are not learned: the probe reads the features
    shuffled = np.random.default_rng(0).permutation(y[:160])
    assert head_accuracy(head, x[:160], shuffled, x[160:], y[160:], 4, cfgs, seed=0) < 0.55


def test_position_embedding_reads_where_a_token_is():
    """The class is which of 4 token positions holds the one marked token: as a set the rows are alike, so only
    the probe with a position embedding can tell them apart."""
    g = torch.Generator().manual_seed(0)
    n, p, c = 240, 4, 8
    y = np.arange(n) % p
    x = 0.1 * torch.randn(n, p, c, generator=g)
    x[torch.arange(n), torch.as_tensor(y), 0] += 3.0  # the marked token: channel 0 high
    accs = {}
    for pos in (False, True):
        cfgs = HeadConfigs(AttentiveConfig(epochs=60, batch_size=32, lr=1e-2, position_embedding=pos), LinearConfig(),
                           KnnConfig())
        accs[pos] = head_accuracy("attentive", x[:160], y[:160], x[160:], y[160:], p, cfgs, seed=0)
    assert accs[True] >= 0.9 and accs[False] < 0.5, accs


def test_motion_tokens_hold_the_previous_frames_neighbours():
    tokens = torch.arange(18.0).reshape(1, 2, 9, 1)  # 2 frames of a 3x3 grid, frame 0 is 0..8 row by row
    m = motion_tokens(tokens, 3).reshape(2, 3, 3, 5)  # (T, row, col, [self, above, below, left, right])
    assert not m[0, ..., 1:].any()  # nothing before the first frame
    assert m[1, 1, 1].tolist() == [13, 1, 7, 3, 5] and m[1, 0, 0].tolist() == [9, 6, 3, 2, 1]  # wrapping round


def test_attentive_probe_reads_motion_when_the_features_carry_it():
    """moving_shapes' direction is in no single frame: raw pixels, pooled or as a set of tokens, stay at chance,
    while the oracle that mixes time (each patch beside the previous frame's neighbours) gives it to the
    attentive probe. Mean pooling loses it even then. This tests the task and the probe, not an encoder."""
    data = moving_shapes(200, 32, 4, seed=0)  # 4 px patches at 32 px: the 8x8 grid of 64 px at 8x, a token a frame
    cfgs = HeadConfigs(AttentiveConfig(), LinearConfig(), KnnConfig())  # the probes' defaults

    def accuracy(source, head, seed=0):
        f = source.features(data.clips, (0,))[0].flatten(1, 2)  # (N, T*P, C)
        return head_accuracy(head, f[data.train], data.labels[data.train], f[data.test], data.labels[data.test], 4,
                             cfgs, seed)

    pixels, motion = PixelSource(32, 4), PixelMotionSource(32, 4)
    assert min(accuracy(motion, "attentive", seed) for seed in range(3)) >= 0.9  # chance is 0.25
    assert max(accuracy(pixels, "attentive"), accuracy(pixels, "linear"), accuracy(motion, "linear")) < 0.45


# ---------------------------------------------------------------- tracking: propagation and scores
def colour_oracle(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, H, W, 64): one-hot of the pixel's colour, 4 levels a channel."""
    q = frames.astype(np.int64) // 64
    return torch.nn.functional.one_hot(torch.from_numpy(q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]), 64).float()


def test_label_propagation_with_an_oracle_feature_tracks_a_moving_shape():
    video = moving_objects(1, 12, 32, seed=0)[0]
    assert set(np.unique(video.masks[0])) == {0, 1, 2} and not np.array_equal(video.masks[0], video.masks[-1])
    for name in ("dino", "crw"):
        pred = propagate(colour_oracle(video.frames), video.masks[0], PROPAGATION_SETTINGS[name])
        scores = summarise({"v": score_video(pred, video.masks)})
        assert scores["J&F"] >= 0.9 and scores["n_objects"] == 2, (name, scores)
    # a feature that holds nothing (every pixel alike) does not track: the score measures the propagation
    blank = torch.ones(12, 32, 32, 4)
    assert summarise({"v": score_video(propagate(blank, video.masks[0], PROPAGATION_SETTINGS["dino"]),
                                       video.masks)})["J&F"] < 0.5


def test_davis_scores_on_known_masks():
    gt = np.zeros((40, 40), bool)
    gt[10:30, 10:30] = True
    assert region_similarity(gt, gt) == 1.0 and boundary_f(gt, gt) == 1.0
    half = gt.copy()
    half[10:30, 20:30] = False
    assert region_similarity(half, gt) == pytest.approx(0.5)
    far = np.roll(gt, 8, axis=1)  # boundaries 8 px apart, far beyond the tolerance (1 px here)
    assert boundary_f(far, gt) < 0.6 and boundary_f(np.zeros_like(gt), gt) == 0.0


# ---------------------------------------------------------------- features and cache
def test_one_pass_extraction_equals_per_layer_encoding(checkpoint):
    clips = moving_squares(3, 3, seed=1)
    enc = TotoEncoder.from_pretrained(checkpoint, keep_all=True)
    feats = all_layer_features(enc, clips, batch_size=2)  # two batches
    assert feats.shape == (5, 3, 3, 64, 64) and feats.dtype == torch.float16
    for k in range(1, 5):
        at_k = TotoEncoder.from_pretrained(checkpoint, layer=k)(clips).features
        torch.testing.assert_close(feats[k].float(), at_k, atol=2e-2, rtol=1e-2)
    # with a window shorter than the clips: the streaming encoder, frame by frame
    long = moving_squares(2, 5, seed=2)
    windowed = all_layer_features(enc, long, layers=[1, 4], window=2)
    for j, k in enumerate((1, 4)):
        stream = StreamingEncoder(TotoEncoder.from_pretrained(checkpoint, layer=k), window=2)
        ref = torch.cat([stream.step(torch.from_numpy(long[:, t])).features for t in range(5)], dim=1)
        torch.testing.assert_close(windowed[j].float(), ref, atol=2e-2, rtol=1e-2)


def test_cached_features_are_reused_and_invalidated_when_the_checkpoint_changes(checkpoint, tmp_path):
    path = tmp_path / "toto"
    tok, model = tiny_models(max_frames=8)
    save_toto(path, tok, model)
    clips = moving_squares(2, 2, seed=3)
    cache = FeatureCache(tmp_path / "cache")
    source = lambda: EncoderSource("toto", TotoEncoder.from_pretrained(path, keep_all=True), slot=f"ckpt:{path}")
    first = cache.features(source(), clips, (0, 2, 4))
    again = cache.features(source(), clips, (0, 2, 4))
    assert (cache.misses, cache.hits) == (1, 1) and torch.equal(first, again)
    cache.features(source(), clips[:1], (0, 2, 4))  # other data: its own entry
    assert (cache.misses, cache.hits) == (2, 1)
    with torch.no_grad():
        model.layers[1].ffn.w2.weight.mul_(3.0)  # layer 0 (the embedding) is unchanged, layer 2 is not
    save_toto(path, tok, model)
    changed = cache.features(source(), clips, (0, 2, 4))
    assert (cache.misses, cache.hits) == (3, 1)
    assert torch.equal(changed[0], first[0]) and not torch.allclose(changed[1], first[1])
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # the stale entry was replaced
    pixels = PixelSource(64, 8).features(clips, (0,))
    assert pixels.shape == (1, 2, 2, 64, 192) and (cache.misses, cache.hits) == (3, 1)


def test_offline_data():
    d = digits(64)
    assert d.clips.shape == (1797, 1, 64, 64, 3) and len(d.test) == 450 and d.summary()["chance"] < 0.11
    assert (d.clips[0, 0, :8, :8] == d.clips[0, 0, 0, 0]).all()  # one digit pixel per 8x8 token patch
    v = moving_shapes(16, 64, 3, seed=0)
    assert v.clips.shape == (16, 3, 64, 64, 3) and sorted(np.bincount(v.labels)) == [4, 4, 4, 4]


# ---------------------------------------------------------------- the command on users' layouts
def write_layouts(root):
    """A small ImageFolder, a class folder of mp4 videos and a DAVIS-2017 directory."""
    rng = np.random.default_rng(0)
    for c, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (root / "images" / c).mkdir(parents=True)
        for i in range(6):
            img = rng.integers(0, 60, (48, 80, 3)).astype(np.uint8)  # not square: the frames' centre crop
            img[10:30, 30:50] = colour
            Image.fromarray(img).save(root / "images" / c / f"{i}.png")
    clips = moving_shapes(16, 64, 4, seed=1)
    for i, (clip, label) in enumerate(zip(clips.clips, clips.labels)):
        write_mp4(root / "videos" / clips.classes[label] / f"{i}.mp4", clip, fps=10, crf=0)
    video = moving_objects(1, 5, 64, seed=2)[0]
    for sub in ("JPEGImages/480p/shapes", "Annotations/480p/shapes", "ImageSets/2017"):
        (root / "davis" / sub).mkdir(parents=True)
    (root / "davis/ImageSets/2017/val.txt").write_text("shapes\n")
    for t, (frame, mask) in enumerate(zip(video.frames, video.masks)):
        Image.fromarray(frame).save(root / f"davis/JPEGImages/480p/shapes/{t:05d}.jpg", quality=95)
        png = Image.fromarray(mask)
        png.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * (3 * 253))  # indexed, as DAVIS's masks
        png.save(root / f"davis/Annotations/480p/shapes/{t:05d}.png")
    return root


def _probe(monkeypatch, *overrides):
    monkeypatch.setattr("sys.argv", ["toto-probe", *overrides])
    probe_main()


SMALL = ("seeds=[0]", "attentive.epochs=2", "layers=[0,2,4]", "video.clip_frames=4", "progress=false")


def test_command_runs_on_users_layouts_writes_results_and_reuses_the_cache(monkeypatch, tmp_path, checkpoint, capsys):
    root = write_layouts(tmp_path / "data")
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = (f"encoder={checkpoint}", f"image.root={root / 'images'}", f"video.root={root / 'videos'}",
            f"tracking.root={root / 'davis'}", "tracking.setting=crw", f"out_dir={out}", f"cache_dir={cache}", *SMALL)
    _probe(monkeypatch, *args)
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["tasks"]) == ["image", "tracking", "video"]
    image = res["tasks"]["image"]
    assert image["classes"] == ["blue", "red"] and image["n_train"] + image["n_test"] == 12
    assert sorted(image["sources"]) == ["pixels", "toto", "toto_random"]
    toto = image["sources"]["toto"]
    assert toto["layers"] == [0, 2, 4] and toto["relative_depth"] == [0.0, 0.5, 1.0]
    assert sorted(toto["heads"]) == ["attentive", "knn", "linear"] and len(toto["heads"]["linear"]["mean"]) == 3
    assert res["tasks"]["video"]["frames_per_clip"] == 4 and res["tasks"]["video"]["classes"] == ["down", "left",
                                                                                                    "right", "up"]
    track = res["tasks"]["tracking"]
    assert track["propagation"]["setting"] == "crw" and track["n_videos"] == 1
    assert all(0 <= v <= 1 for v in track["sources"]["toto"]["J&F"]) and track["sources"]["pixels"]["layers"] == [0]
    assert res["cache"]["hits"] == 0 and res["cache"]["misses"] > 0
    for name in ("summary.md", "image_by_depth.png", "video_by_depth.png", "tracking_by_depth.png"):
        assert (out / name).stat().st_size > 0
    assert f"wrote {out / 'results.json'}" in capsys.readouterr().out
    _probe(monkeypatch, *args)  # the encoder is frozen: the second run reads every feature back
    again = json.loads((out / "results.json").read_text())
    assert again["cache"]["misses"] == 0 and again["cache"]["hits"] == res["cache"]["misses"]
    assert again["tasks"]["image"]["sources"]["toto"]["heads"]["linear"] == toto["heads"]["linear"]


def test_untrained_default_says_so(monkeypatch, tmp_path, capsys):
    _probe(monkeypatch, "tasks=[video]", "video.n_generated=16", "heads=[knn]", f"out_dir={tmp_path / 'o'}",
           f"cache_dir={tmp_path / 'c'}", *SMALL)
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["encoder"]["checkpoint"] is None and "randomly initialised" in res["encoder"]["note"]
    assert sorted(res["tasks"]["video"]["sources"]) == ["pixels", "toto_untrained"]
    assert "not Toto's features" in (tmp_path / "o" / "summary.md").read_text()


def _bad(tmp_path, kind):
    if kind == "no classes":
        (tmp_path / "flat").mkdir()
        Image.new("RGB", (64, 64)).save(tmp_path / "flat" / "a.png")
        return ["tasks=[image]", f"image.root={tmp_path / 'flat'}"], "expected one sub-folder per class"
    if kind == "masks":
        root = write_layouts(tmp_path / "data")
        mask = root / "davis/Annotations/480p/shapes/00002.png"
        Image.open(mask).resize((32, 32)).save(mask)
        return ["tasks=[tracking]", f"tracking.root={root / 'davis'}"], "masks do not match their frames: 00002.png"
    if kind == "layer":
        return ["tasks=[image]", "layers=[0,9]"], r"layers: expected indices in 0..4"
    tok, _ = tiny_models()
    save_tokenizer(tmp_path / "tok", tok)
    return [f"encoder={tmp_path / 'tok'}"], "expected kind 'toto', found 'tokenizer'"


@pytest.mark.parametrize("kind", ["no classes", "masks", "layer", "wrong checkpoint"])
def test_bad_input_is_one_message_and_writes_nothing(monkeypatch, tmp_path, capsys, kind):
    overrides, message = _bad(tmp_path, kind)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with pytest.raises(SystemExit) as exit_:
        _probe(monkeypatch, *overrides, f"out_dir={out}", f"cache_dir={cache}", "progress=false")
    err = capsys.readouterr().err
    assert exit_.value.code == EXIT_BAD_INPUT and err.startswith("toto-probe: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not out.exists() and not cache.exists()
