"""Tracking by label propagation (the DAVIS-2017 semi-supervised protocol) on frozen features.

Given the first frame's object masks, each later frame's labels come from its k nearest neighbours among
the tokens of the first frame and of the last n frames (whose labels were themselves propagated), restricted
to a square neighbourhood of `radius` tokens around the query's position, weighted by
softmax(cosine similarity / temperature) over the k. Labels are kept soft at the token grid; each frame's
labels are enlarged to the masks' resolution (bilinear), each object's map rescaled to [0, 1] and the
arg-max taken, as DINO's evaluation does.

Published settings (`PROPAGATION_SETTINGS`); the default is DINO's:
- "dino": DINO's eval_video_segmentation.py defaults: the first + 7 last frames, top 5, radius 12, temperature 0.1;
- "crw": the DAVIS command of CRW (Jabri et al. 2020): the first + 20 last frames, top 10, radius 12,
  temperature 0.05.
The radius counts tokens, as published; on a small grid (8x8 at 64 px) 12 tokens cover the whole frame.

Scores, as the DAVIS-2017 evaluation computes them: J is the region similarity (IoU), F the boundary
F-measure (boundary pixels matched within 0.008 of the image diagonal), each averaged over the frames but the
first (given) and the last, per object; the reported J, F are means over every object of every video, and
J&F their mean. Pixels labelled 255 (void) count for neither.

Data: the DAVIS-2017 layout (`root/JPEGImages/480p/<video>/<frame>.jpg`, `root/Annotations/480p/<video>/
<frame>.png` indexed masks, videos listed in `root/ImageSets/2017/val.txt`); the encoder's square is the
frames' centre (`preprocess_frame`) and masks are scored on that same centre square at their own resolution.
Offline, `moving_objects` generates videos of a square and a disc moving over a textured background, with
exact masks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import binary_dilation

from toto_robot.frames import preprocess_frame, preprocess_frames

VOID = 255


@dataclass(frozen=True)
class PropagationConfig:
    n_last: int  # previous frames in the context, besides the first
    topk: int
    radius: int  # half side of the square neighbourhood, in tokens
    temperature: float
    setting: str = "custom"

    def __post_init__(self):
        if self.n_last < 0 or self.topk < 1 or self.radius < 0 or self.temperature <= 0:
            raise ValueError(f"tracking propagation: expected n_last >= 0, topk >= 1, radius >= 0, temperature > 0, "
                             f"got {self}")


PROPAGATION_SETTINGS = {
    "dino": PropagationConfig(n_last=7, topk=5, radius=12, temperature=0.1, setting="dino"),
    "crw": PropagationConfig(n_last=20, topk=10, radius=12, temperature=0.05, setting="crw"),
}


def propagation_config(setting: str, **overrides) -> PropagationConfig:
    """A published setting, with any non-None field overridden (the result is then named `<setting>+custom`)."""
    if setting not in PROPAGATION_SETTINGS:
        raise ValueError(f"tracking.setting: expected one of {sorted(PROPAGATION_SETTINGS)}, got {setting!r}")
    changed = {k: v for k, v in overrides.items() if v is not None}
    base = PROPAGATION_SETTINGS[setting]
    return replace(base, **changed, setting=f"{setting}+custom") if changed else base


def _neighbourhood(h: int, w: int, radius: int) -> torch.Tensor:
    """(h*w, h*w) bool: source within `radius` tokens of the query along both axes."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)


def _labels_to_grid(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H, W) labels -> (h, w) by nearest neighbour, as DINO shrinks the first mask to its patch grid."""
    return np.array(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.Resampling.NEAREST))


@torch.no_grad()
def propagate(features: torch.Tensor, first_mask: np.ndarray, cfg: PropagationConfig) -> np.ndarray:
    """features (T, h, w, C) of every frame, first_mask (H, W) labels 0..K-1 (255 void) -> (T, H, W) uint8
    labels (frame 0 is the given mask)."""
    t_len, h, w, c = features.shape
    first = np.where(first_mask == VOID, 0, first_mask)
    n_labels = int(first.max()) + 1
    f = F.normalize(features.float().reshape(t_len, h * w, c), dim=-1)  # (T, hw, C)
    soft = {0: F.one_hot(torch.from_numpy(_labels_to_grid(first, h, w)).long().flatten(), n_labels).float()}
    near = _neighbourhood(h, w, cfg.radius)  # (hw, hw)
    out = np.empty((t_len, *first_mask.shape), np.uint8)
    out[0] = first_mask
    for t in range(1, t_len):
        context = [0] + list(range(max(1, t - cfg.n_last), t))
        sim = torch.einsum("qc,nsc->qns", f[t], f[context]) / cfg.temperature  # (hw, n, hw)
        sim = sim.masked_fill(~near[:, None, :], float("-inf")).reshape(h * w, -1)  # (hw, n*hw)
        top, idx = sim.topk(min(cfg.topk, sim.shape[1]), dim=1)  # (hw, k)
        labels = torch.stack([soft[s] for s in context]).reshape(-1, n_labels)  # (n*hw, K)
        soft[t] = (top.softmax(dim=1)[..., None] * labels[idx]).sum(1)  # (hw, K)
        up = F.interpolate(soft[t].T.reshape(1, n_labels, h, w), size=first_mask.shape, mode="bilinear",
                           align_corners=False)[0]  # (K, H, W)
        if t - cfg.n_last >= 1:  # in no later frame's context
            del soft[t - cfg.n_last]
        lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
        up = torch.where(hi > 0, (up - lo) / (hi - lo).clamp_min(1e-12), up)  # each map to [0, 1]
        out[t] = up.argmax(0).numpy()
    return out


# ---------------------------------------------------------------- DAVIS-2017 scores
def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of two boolean masks; 1 when both are empty."""
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask whose right, lower or lower-right neighbour differs (the image's last row and
    column compare with what lies inside the image only)."""
    m = mask.astype(bool)
    b = np.zeros_like(m)
    b[:, :-1] |= m[:, :-1] != m[:, 1:]
    b[:-1, :] |= m[:-1, :] != m[1:, :]
    b[:-1, :-1] |= m[:-1, :-1] != m[1:, 1:]
    return b


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius: radius + 1, -radius: radius + 1]
    return x * x + y * y <= radius * radius


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """F: the F-measure of boundary pixels, each matched when the other boundary lies within
    ceil(bound_th * image diagonal) pixels; 1 when both boundaries are empty, 0 when one is."""
    tol = max(1, int(np.ceil(bound_th * np.hypot(*pred.shape))))
    bp, bg = boundary_map(pred), boundary_map(gt)
    n_p, n_g = bp.sum(), bg.sum()
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    disk = _disk(tol)
    precision = np.logical_and(bp, binary_dilation(bg, disk)).sum() / n_p
    recall = np.logical_and(bg, binary_dilation(bp, disk)).sum() / n_g
    return 0.0 if precision + recall == 0 else float(2 * precision * recall / (precision + recall))


def score_video(pred: np.ndarray, gt: np.ndarray) -> dict[int, tuple[float, float]]:
    """pred, gt (T, H, W) labels -> {object: (J, F)}, each averaged over frames 1..T-2 (DAVIS scores neither
    the given first frame nor the last); objects are the first frame's labels."""
    objects = [int(o) for o in np.unique(gt[0]) if o not in (0, VOID)]
    frames = range(1, len(gt) - 1)
    scores = {}
    for o in objects:
        js, fs = [], []
        for t in frames:
            void = gt[t] == VOID
            p, g = (pred[t] == o) & ~void, (gt[t] == o) & ~void
            js.append(region_similarity(p, g))
            fs.append(boundary_f(p, g))
        scores[o] = (float(np.mean(js)), float(np.mean(fs)))
    return scores


def summarise(per_video: dict[str, dict[int, tuple[float, float]]]) -> dict:
    """Means over every object of every video: J, F and J&F."""
    pairs = [jf for objects in per_video.values() for jf in objects.values()]
    if not pairs:
        raise ValueError("tracking: expected at least one object in a first-frame mask, found none")
    j, f = float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))
    return {"J": j, "F": f, "J&F": (j + f) / 2, "n_objects": len(pairs)}


# ---------------------------------------------------------------- videos
@dataclass
class TrackingVideo:
    """Frames at the encoder's size and masks (labels, 255 void) on the same square at their own resolution."""

    name: str
    frames: np.ndarray  # (T, S, S, 3) uint8
    masks: np.ndarray  # (T, M, M) uint8

    def load(self, image_size: int) -> TrackingVideo:
        if self.frames.shape[1:3] != (image_size, image_size):
            raise ValueError(f"tracking video {self.name}: expected {image_size}x{image_size} frames (the encoder's "
                             f"size), got {self.frames.shape[1]}x{self.frames.shape[2]}")
        return self


def centre_square(mask: np.ndarray) -> np.ndarray:
    """(H, W) labels -> the centred square `preprocess_frame` keeps, at the same resolution (nothing resampled)."""
    return preprocess_frame(np.repeat(mask[:, :, None], 3, axis=2), min(mask.shape))[:, :, 0]


class DavisVideo:
    """A DAVIS video's file lists, checked; `load` reads it."""

    def __init__(self, name: str, frames: list[Path], masks: list[Path]):
        self.name, self.frame_paths, self.mask_paths = name, frames, masks

    def load(self, image_size: int) -> TrackingVideo:
        frames = preprocess_frames(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in self.frame_paths]),
                                   image_size)
        masks = np.stack([centre_square(np.asarray(Image.open(p))) for p in self.mask_paths])
        return TrackingVideo(self.name, frames, masks)


def davis_videos(root: str | Path, resolution: str = "480p", image_set: str = "val") -> list[DavisVideo]:
    """The videos of `root/ImageSets/2017/<image_set>.txt` (every video folder without it), each checked:
    one indexed PNG mask per frame, of its frame's size, at least 3 frames."""
    root = Path(root)
    images, annotations = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    for d in (images, annotations):
        if not d.is_dir():
            raise FileNotFoundError(f"tracking {root}: expected the DAVIS-2017 layout (JPEGImages/{resolution}/<video>/"
                                    f"*.jpg, Annotations/{resolution}/<video>/*.png), found no {d}")
    listing = root / "ImageSets" / "2017" / f"{image_set}.txt"
    names = (listing.read_text().split() if listing.is_file()
             else sorted(p.name for p in images.iterdir() if p.is_dir()))
    if not names:
        raise ValueError(f"tracking {root}: expected videos in {listing if listing.is_file() else images}, found none")
    videos = []
    for name in names:
        frames = sorted((images / name).glob("*.jpg"))
        masks = sorted((annotations / name).glob("*.png"))
        stems_f, stems_m = [p.stem for p in frames], [p.stem for p in masks]
        if not frames or stems_f != stems_m:
            missing = sorted(set(stems_f) ^ set(stems_m))[:3]
            raise ValueError(f"tracking video {name}: masks do not match their frames: {len(frames)} frames, "
                             f"{len(masks)} masks (expected one {annotations.name}/{name}/<frame>.png per "
                             f"{images.name}/{name}/<frame>.jpg; unmatched {missing})")
        if len(frames) < 3:
            raise ValueError(f"tracking video {name}: expected at least 3 frames (the first is given and the last "
                             f"is not scored), got {len(frames)}")
        for fp, mp in zip(frames, masks):
            with Image.open(fp) as fi, Image.open(mp) as mi:
                if fi.size != mi.size:
                    raise ValueError(f"tracking video {name}: masks do not match their frames: {mp.name} is "
                                     f"{mi.size[0]}x{mi.size[1]}, {fp.name} is {fi.size[0]}x{fi.size[1]}")
                if mi.mode not in ("P", "L"):
                    raise ValueError(f"tracking video {name}: expected indexed (palette) PNG masks, {mp.name} is "
                                     f"mode {mi.mode}")
        videos.append(DavisVideo(name, frames, masks))
    return videos


PALETTE = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230], [230, 200, 40], [200, 60, 220]], np.uint8)


def moving_objects(n_videos: int, n_frames: int, image_size: int, seed: int = 0) -> list[TrackingVideo]:
    """Videos of a square (label 1) and a disc (label 2, drawn over the square) of saturated colours moving at
    constant speed and bouncing off the edges, over a low-saturation texture; exact masks at image_size."""
    rng = np.random.default_rng(seed)
    s = image_size
    side = max(4, s // 4)
    yy, xx = np.mgrid[0:s, 0:s]
    videos = []
    for v in range(n_videos):
        coarse = rng.uniform(70, 170, (4, 4, 1)) + rng.uniform(-12, 12, (4, 4, 3))
        bg = np.asarray(Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((s, s), Image.Resampling.BILINEAR),
                        np.float32)
        colours = PALETTE[rng.choice(len(PALETTE), 2, replace=False)]
        pos = rng.uniform(0, s - side, (2, 2))
        vel = rng.uniform(1, 3, (2, 2)) * rng.choice([-1, 1], (2, 2)) * s / 64
        frames = np.empty((n_frames, s, s, 3), np.uint8)
        masks = np.zeros((n_frames, s, s), np.uint8)
        for t in range(n_frames):
            img = bg + rng.normal(0, 3, bg.shape)
            (y0, x0), (y1, x1) = pos
            square = (yy >= y0) & (yy < y0 + side) & (xx >= x0) & (xx < x0 + side)
            disc = (yy - y1 - side / 2) ** 2 + (xx - x1 - side / 2) ** 2 <= (side / 2) ** 2
            for label, region in ((1, square), (2, disc)):
                img[region] = colours[label - 1]
                masks[t][region] = label
            frames[t] = img.clip(0, 255)
            pos = pos + vel
            bounce = (pos < 0) | (pos > s - side)
            vel = np.where(bounce, -vel, vel)
            pos = pos.clip(0, s - side)
        videos.append(TrackingVideo(f"generated_{v}", frames, masks))
    return videos
