"""Per-episode visual domain randomization of the robosuite environments: camera poses, lighting, textures.

`RandomizedEnv` is a `RobosuiteEnv` that redraws its scene's looks at every `reset(seed=...)`, before the
first frame, and keeps them for the whole episode, so each recorded clip is visually consistent. The draw
depends only on the episode's seed (the same seed gives the same frames, whatever ran before).

What works in robosuite 1.5.1 with MuJoCo 3.x and offscreen (EGL) rendering:
- camera pose and field of view: robosuite's `CameraModder` (`robosuite.utils.mjmod`), as is.
- lighting: robosuite's `LightingModder`, as is. Switching lights off (`lighting.toggle`) is off by default:
  every task has a single light, so half of the episodes would be lit by the headlight alone.
- textures and colours: robosuite's `TextureModder` does not run here. It reads `MjModel.tex_rgb` (MuJoCo 3.2
  renamed it `tex_data`) and treats `mat_texid` as one texture per material (now one per texture role), so it
  raises on construction; and its `upload_texture` only uploads into a new, throwaway GL context when the sim
  has none, so edited bitmaps never reach the env's own offscreen context. `DomainRandomizationWrapper` asserts
  MuJoCo 3.1.1 for colour randomization and returns the cached, pre-randomization observation after reset.
  `TextureRandomizer` below does TextureModder's job (random rgb / checker / noise / gradient bitmaps, material
  and geom colours) on MuJoCo 3.x and uploads into the env's context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import mujoco
import numpy as np
from robosuite.utils.mjmod import CameraModder, LightingModder

from envs.robosuite_env import RobosuiteEnv

TEXTURE_VARIATIONS = ("rgb", "checker", "noise", "gradient")
_RANDOMIZATION_STREAM = 7_919  # mixed into the episode seed: scene looks draw apart from placements and policies


@dataclass
class CameraRandomization:
    enabled: bool = True
    position: float = 0.03  # m, uniform perturbation of each coordinate
    rotation: float = 0.1  # rad, largest axis-angle turn
    fovy: float = 5.0  # degrees, uniform perturbation of the vertical field of view

    def __post_init__(self) -> None:
        _check_sizes("randomization.camera", self, ("position", "rotation", "fovy"))


@dataclass
class LightingRandomization:
    enabled: bool = True
    position: float = 0.5  # m, each coordinate
    direction: float = 0.5  # size of the perturbation of the light's direction vector
    diffuse: float = 0.3  # each colour channel (the tasks' light: 0.7)
    ambient: float = 0.2  # (the tasks' light: 0.0; MuJoCo clamps at 0)
    specular: float = 0.2  # (the tasks' light: 0.3)
    toggle: bool = False  # also switch lights off at random (see the module docstring)

    def __post_init__(self) -> None:
        _check_sizes("randomization.lighting", self, ("position", "direction", "diffuse", "ambient", "specular"))


@dataclass
class TextureRandomization:
    enabled: bool = True
    strength: float = 0.6  # blend toward the random bitmap / colour: 0 keeps the scene's, 1 replaces it
    variations: tuple[str, ...] = TEXTURE_VARIATIONS  # bitmap kinds drawn from, one per texture
    skybox: bool = True  # also the skybox (the background)

    def __post_init__(self) -> None:
        self.variations = tuple(self.variations)
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"randomization.texture.strength: must be in [0, 1], got {self.strength}")
        unknown = [v for v in self.variations if v not in TEXTURE_VARIATIONS]
        if unknown or not self.variations:
            raise ValueError(f"randomization.texture.variations: expected a non-empty list from "
                             f"{list(TEXTURE_VARIATIONS)}, got {list(self.variations)}")


@dataclass
class RandomizationConfig:
    camera: CameraRandomization = field(default_factory=CameraRandomization)
    lighting: LightingRandomization = field(default_factory=LightingRandomization)
    texture: TextureRandomization = field(default_factory=TextureRandomization)

    def __post_init__(self) -> None:
        for name, kind in (("camera", CameraRandomization), ("lighting", LightingRandomization),
                           ("texture", TextureRandomization)):
            if isinstance(getattr(self, name), dict):  # from a config file
                setattr(self, name, kind(**getattr(self, name)))

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(name for name in ("camera", "lighting", "texture") if getattr(self, name).enabled)

    @classmethod
    def off(cls) -> RandomizationConfig:
        return cls(CameraRandomization(enabled=False), LightingRandomization(enabled=False),
                   TextureRandomization(enabled=False))


def _check_sizes(prefix: str, config: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(config, name) < 0:
            raise ValueError(f"{prefix}.{name}: must be >= 0, got {getattr(config, name)}")
    if config.enabled and not any(getattr(config, name) > 0 for name in names):
        raise ValueError(f"{prefix}: enabled with every perturbation size 0 ({', '.join(names)}); "
                         "set one above 0 or enabled=false")


class TextureRandomizer:
    """TextureModder's randomization for MuJoCo 3.x (see the module docstring): each texture becomes a blend of
    its own bitmap and a random one (constant colour, checker, noise or gradient), and every material and geom
    colour a blend of its own and a random colour. Alpha is kept. Same interface as robosuite's modders:
    `random_state`, `randomize()`, `restore_defaults()`."""

    def __init__(self, sim, config: TextureRandomization, random_state: np.random.RandomState | None = None):
        self.sim, self.config = sim, config
        self.random_state = random_state or np.random.RandomState(0)
        model = sim.model._model
        skybox = int(mujoco.mjtTexture.mjTEXTURE_SKYBOX)
        self.textures = [i for i in range(model.ntex) if config.skybox or model.tex_type[i] != skybox]
        self._tex_data = model.tex_data.copy()
        self._mat_rgba = model.mat_rgba.copy()
        self._geom_rgba = model.geom_rgba.copy()

    def restore_defaults(self) -> None:
        model = self.sim.model._model
        model.tex_data[:] = self._tex_data
        model.mat_rgba[:] = self._mat_rgba
        model.geom_rgba[:] = self._geom_rgba
        for tex in self.textures:
            self._upload(tex)

    def randomize(self) -> None:
        model, rs, s = self.sim.model._model, self.random_state, self.config.strength
        model.mat_rgba[:, :3] = (1 - s) * self._mat_rgba[:, :3] + s * rs.uniform(size=(model.nmat, 3))
        model.geom_rgba[:, :3] = (1 - s) * self._geom_rgba[:, :3] + s * rs.uniform(size=(model.ngeom, 3))
        k = np.uint16(round(256 * s))  # the blend in 8-bit fixed point: textures are megapixels, floats are slow
        for tex in self.textures:
            h, w, c = int(model.tex_height[tex]), int(model.tex_width[tex]), int(model.tex_nchannel[tex])
            if c < 3:  # a grey-level texture: no colours to vary
                continue
            span = slice(int(model.tex_adr[tex]), int(model.tex_adr[tex]) + h * w * c)
            bitmap = self._tex_data[span].reshape(h, w, c).copy()  # (H, W, C)
            pattern = self._pattern(h, w)  # (H, W, 3) uint8
            blend = (bitmap[..., :3].astype(np.uint16) * (256 - k) + pattern.astype(np.uint16) * k) >> 8
            bitmap[..., :3] = blend.astype(np.uint8)
            model.tex_data[span] = bitmap.reshape(-1)
            self._upload(tex)

    def _pattern(self, h: int, w: int) -> np.ndarray:
        rs = self.random_state
        kind = self.config.variations[rs.randint(len(self.config.variations))]
        a, b = (rs.randint(0, 256, size=3).astype(np.uint8) for _ in range(2))
        if kind == "rgb":
            return np.broadcast_to(a, (h, w, 3))
        if kind == "gradient":  # down the rows or across the columns
            if rs.uniform() < 0.5:
                t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]  # (H, 1, 1)
            else:
                t = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :, None]  # (1, W, 1)
            return np.broadcast_to((a * (1 - t) + b * t).astype(np.uint8), (h, w, 3))
        if kind == "checker":
            side = max(1, min(h, w) // rs.randint(2, 17))  # 2 to 16 squares across
            on = ((np.arange(h) // side) % 2 == 1)[:, None] ^ ((np.arange(w) // side) % 2 == 1)[None, :]  # (H, W)
        else:  # noise
            on = rs.uniform(size=(h, w)) < rs.uniform(0.1, 0.9)  # (H, W)
        return np.stack([b, a])[on.view(np.uint8)]  # (H, W, 3): a where on, else b

    def _upload(self, tex: int) -> None:
        context = self.sim._render_context_offscreen  # None: a state-only env renders nothing
        if context is not None:
            context.upload_texture(tex)  # makes its GL context current first


class SceneRandomizer:
    """The enabled randomizers of one env's sim, drawn from one random state per episode seed."""

    def __init__(self, sim, cameras: tuple[str, ...], config: RandomizationConfig):
        self.config = config
        self.modders: list = []
        cam, light = config.camera, config.lighting
        if cam.enabled and cameras:
            self.modders.append(CameraModder(
                sim, camera_names=list(cameras), randomize_position=cam.position > 0,
                randomize_rotation=cam.rotation > 0, randomize_fovy=cam.fovy > 0, position_perturbation_size=cam.position,
                rotation_perturbation_size=cam.rotation, fovy_perturbation_size=cam.fovy,
            ))
        if light.enabled:
            self.modders.append(LightingModder(
                sim, randomize_position=light.position > 0, randomize_direction=light.direction > 0,
                randomize_specular=light.specular > 0, randomize_ambient=light.ambient > 0,
                randomize_diffuse=light.diffuse > 0, randomize_active=light.toggle,
                position_perturbation_size=light.position, direction_perturbation_size=light.direction,
                specular_perturbation_size=light.specular, ambient_perturbation_size=light.ambient,
                diffuse_perturbation_size=light.diffuse,
            ))
        if config.texture.enabled:
            self.modders.append(TextureRandomizer(sim, config.texture))

    def randomize(self, seed: int) -> None:
        """The scene's looks for episode `seed`; each modder perturbs its saved defaults, so earlier episodes
        leave no trace."""
        state = np.random.RandomState(np.random.SeedSequence([seed, _RANDOMIZATION_STREAM]).generate_state(4))
        for modder in self.modders:
            modder.random_state = state
            modder.randomize()

    def restore(self) -> None:
        for modder in self.modders:
            modder.restore_defaults()


class RandomizedEnv(RobosuiteEnv):
    """A `RobosuiteEnv` whose cameras, lights and textures are redrawn at each reset (see the module docstring).
    `randomization`: a `RandomizationConfig` (or its dict); the other arguments are `RobosuiteEnv`'s."""

    def __init__(self, task: str = "Lift", render_mode: str | None = None,
                 randomization: RandomizationConfig | dict | None = None, **config: Any):
        super().__init__(task, render_mode, **config)
        if isinstance(randomization, dict):
            randomization = RandomizationConfig(**randomization)
        self.randomization = randomization or RandomizationConfig()
        cameras = tuple(dict.fromkeys((*self.config.cameras, self.config.video_camera)))
        self.randomizer = SceneRandomizer(self._env.sim, cameras, self.randomization)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:  # gymnasium's "carry on": draw the looks from the env's own generator
            seed = int(self.np_random.integers(2**31))
        # Before robosuite's reset, whose sim.forward() places the cameras and whose observation is the first frame.
        self.randomizer.randomize(seed)
        return super().reset(seed=seed, options=options)
