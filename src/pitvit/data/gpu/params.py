"""Per-sample random parameters of the recipe's training augmentation, drawn exactly as the CPU pipeline draws them.

The CPU pipeline (:func:`pitvit.data.build_transform` under :class:`pitvit.data.SeededDataset`) seeds python
``random``, numpy's global generator and torch's CPU generator from ``mix_seed(seed, epoch, index, repeat)`` and
then lets timm's RandomResizedCrop, torchvision's flip, timm's RandAugment and timm's RandomErasing draw from them.
:func:`draw_params` replays the same draws, in the same order, from private generators seeded with the same
value, so the GPU pipeline crops, flips, augments and erases sample ``(index, epoch, repeat)`` with the very
parameters the CPU pipeline uses (only the erasing noise differs: it is drawn on the device). This keeps resume
exact (the sampler state suffices) and makes the two pipelines comparable image by image.

RandAugment (Cubuk et al. 2020, timm's variant): ``num_layers`` ops drawn with replacement from the op list, each
applied with probability ``prob`` at magnitude ``N(m, mstd)`` clipped to ``[0, mmax or 10]``; the ``inc1`` list
(``_RAND_INCREASING_TRANSFORMS``) makes every op stronger as the magnitude grows.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from pitvit.utils.errors import ConfigError

__all__ = ["RAND_TRANSFORMS", "RAND_INCREASING_TRANSFORMS", "GEOMETRIC_OPS", "RandAugmentSpec",
           "parse_rand_augment", "level_to_arg", "affine_data", "ParamLayout", "TrainSpec", "ParamDrawer"]

# the op lists of timm.data.auto_augment (_RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS), in timm's order:
# the order matters, RandAugment picks ops by index
RAND_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel")
GEOMETRIC_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"})
_LEVEL_DENOM = 10.0


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed ``rand-...`` string (the grammar of timm's ``rand_augment_transform``)."""

    ops: tuple[str, ...]
    magnitude: float = 10.0
    num_layers: int = 2
    prob: float = 0.5
    mstd: float = 0.0
    mmax: float | None = None
    translate_pct: float = 0.45


def parse_rand_augment(config: str) -> RandAugmentSpec:
    """Parse ``rand-m9-mstd0.5-inc1`` and the like (``m``, ``n``, ``p``, ``mstd``, ``mmax``, ``inc``).

    Raises:
        ConfigError: not a ``rand`` string, or a section this pipeline does not implement (``t``: weighted op
            sets); use ``data.pipeline=cpu`` for those.
    """
    parts = config.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"the GPU pipeline implements RandAugment ('rand-...') only, got {config!r}; "
                         f"use the CPU pipeline (data.pipeline=cpu) for AutoAugment/AugMix")
    magnitude, layers, prob, mstd, mmax, inc = 10.0, 2, 0.5, 0.0, None, False
    for c in parts[1:]:
        if c.startswith("t"):
            raise ConfigError(f"RandAugment transform sets ({c!r}) are not implemented on the GPU; "
                             f"use data.pipeline=cpu")
        cs = re.split(r"(\d.*)", c)
        if len(cs) < 2:
            continue
        key, val = cs[:2]
        if key == "mstd":
            mstd = float(val)
            if mstd > 100:
                mstd = float("inf")
        elif key == "mmax":
            mmax = int(val)
        elif key == "inc":
            inc = bool(int(val))
        elif key == "m":
            magnitude = int(val)
        elif key == "n":
            layers = int(val)
        elif key == "p":
            prob = float(val)
        else:
            raise ConfigError(f"unknown RandAugment section {c!r} in {config!r}")
    return RandAugmentSpec(RAND_INCREASING_TRANSFORMS if inc else RAND_TRANSFORMS, float(magnitude), layers, prob,
                           mstd, mmax)


def _negate(v: float, rng: random.Random) -> float:
    return -v if rng.random() > 0.5 else v


def level_to_arg(name: str, level: float, rng: random.Random, translate_pct: float = 0.45) -> float | None:
    """The op's argument at ``level`` (timm's ``LEVEL_TO_ARG``), drawing the random sign from ``rng``."""
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return _negate(level / _LEVEL_DENOM * 30.0, rng)
    if name in ("ShearX", "ShearY"):
        return _negate(level / _LEVEL_DENOM * 0.3, rng)
    if name in ("TranslateXRel", "TranslateYRel"):
        return _negate(level / _LEVEL_DENOM * translate_pct, rng)
    if name == "Posterize":
        return int(level / _LEVEL_DENOM * 4)
    if name == "PosterizeIncreasing":
        return 4 - int(level / _LEVEL_DENOM * 4)
    if name == "Solarize":
        return min(256, int(level / _LEVEL_DENOM * 256))
    if name == "SolarizeIncreasing":
        return 256 - min(256, int(level / _LEVEL_DENOM * 256))
    if name == "SolarizeAdd":
        return min(128, int(level / _LEVEL_DENOM * 110))
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return level / _LEVEL_DENOM * 1.8 + 0.1
    if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
        return max(0.1, 1.0 + _negate(level / _LEVEL_DENOM * 0.9, rng))
    raise ValueError(f"unknown RandAugment op {name!r}")


def affine_data(name: str, arg: float, width: int, height: int) -> tuple[float, ...]:
    """The 6 coefficients Pillow's ``Image.transform(AFFINE)`` receives for timm's geometric op (output pixel
    centre to input position), including ``Image.rotate``'s own matrix arithmetic."""
    if name == "ShearX":
        return (1.0, arg, 0.0, 0.0, 1.0, 0.0)
    if name == "ShearY":
        return (1.0, 0.0, 0.0, arg, 1.0, 0.0)
    if name == "TranslateXRel":
        return (1.0, 0.0, arg * width, 0.0, 1.0, 0.0)
    if name == "TranslateYRel":
        return (1.0, 0.0, 0.0, 0.0, 1.0, arg * height)
    if name == "Rotate":
        angle = arg % 360.0
        if angle == 0:
            return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        cx, cy = width / 2, height / 2
        t = -math.radians(angle)
        a, b, d, e = round(math.cos(t), 15), round(math.sin(t), 15), round(-math.sin(t), 15), round(math.cos(t), 15)
        c, f = a * -cx + b * -cy, d * -cx + e * -cy
        return (a, b, c + cx, d, e, f + cy)
    raise ValueError(f"{name!r} is not a geometric op")


@dataclass(frozen=True)
class ParamLayout:
    """The columns of one sample's parameter vector (float64), the one description of it that the drawer, the
    device pipeline and the tests use::

        crop (top, left, h, w) | flip | per RandAugment layer: op index (-1: not applied), argument,
        6 affine coefficients (a geometric op's, else zeros) | per erasing box: top, left, h, w (h = 0: no box)

    Args:
        num_layers: RandAugment layers (0: none).
        boxes: erasing boxes (0: no erasing).
    """

    num_layers: int = 0
    boxes: int = 0

    CROP = slice(0, 4)
    FLIP = 4
    _LAYERS = 5
    _LAYER_WIDTH = 8

    def layer(self, k: int) -> slice:
        """All columns of RandAugment layer ``k``."""
        start = self._LAYERS + self._LAYER_WIDTH * k
        return slice(start, start + self._LAYER_WIDTH)

    def op(self, k: int) -> int:
        """The column of layer ``k``'s op index (into the op list; -1: not applied)."""
        return self.layer(k).start

    def arg(self, k: int) -> int:
        """The column of layer ``k``'s op argument."""
        return self.layer(k).start + 1

    def affine(self, k: int) -> slice:
        """Layer ``k``'s 6 affine coefficients (Pillow's ``Image.transform(AFFINE)`` data)."""
        return slice(self.layer(k).start + 2, self.layer(k).stop)

    @property
    def erase(self) -> slice:
        """The erasing boxes, ``4 * boxes`` columns: ``[top, left, h, w]`` per box."""
        start = self._LAYERS + self._LAYER_WIDTH * self.num_layers
        return slice(start, start + 4 * self.boxes)

    @property
    def width(self) -> int:
        """Length of the vector."""
        return self.erase.stop


@dataclass(frozen=True)
class TrainSpec:
    """What the training augmentation needs to draw its parameters (see :func:`pitvit.data.resolve_aug`)."""

    size: tuple[int, int]                     # output (h, w)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    rand_augment: RandAugmentSpec | None = None
    re_prob: float = 0.0
    re_mode: str = "pixel"
    re_count: int = 1
    re_min_area: float = 0.02
    re_max_area: float = 1 / 3
    re_min_aspect: float = 0.3

    @property
    def num_layers(self) -> int:
        return self.rand_augment.num_layers if self.rand_augment is not None else 0

    @property
    def layout(self) -> ParamLayout:
        """The columns of a sample's parameter vector under this spec."""
        return ParamLayout(self.num_layers, self.re_count if self.re_prob > 0 else 0)


class ParamDrawer:
    """Draws the parameter vector of one sample from its seed (columns: :class:`ParamLayout`); holds reusable
    generators (one per process)."""

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec
        self._np = np.random.RandomState(0)
        self._torch = torch.Generator()

    def __call__(self, sample_seed: int, img_h: int, img_w: int) -> np.ndarray:
        s, cols = self.spec, self.spec.layout
        rng = random.Random(sample_seed)  # what random.seed(s) gives the CPU pipeline
        out = np.zeros(cols.width, dtype=np.float64)
        out[cols.CROP] = rrc_params(rng, img_h, img_w, s.scale, s.ratio)
        if s.hflip > 0:
            self._torch.manual_seed(sample_seed)
            out[cols.FLIP] = float(torch.rand(1, generator=self._torch).item() < s.hflip)  # T.RandomHorizontalFlip
        ra = s.rand_augment
        if ra is not None:
            self._np.seed(sample_seed & 0xFFFFFFFF)
            chosen = self._np.randint(0, len(ra.ops), size=ra.num_layers)  # np.random.choice(ops, n), replace
            h, w = s.size
            for layer, k in enumerate(chosen.tolist()):
                name = ra.ops[k]
                out[cols.op(layer)] = -1
                if ra.prob < 1.0 and rng.random() > ra.prob:
                    continue
                mag = ra.magnitude
                if ra.mstd > 0:
                    mag = rng.uniform(0, mag) if ra.mstd == float("inf") else rng.gauss(mag, ra.mstd)
                mag = max(0.0, min(mag, ra.mmax or _LEVEL_DENOM))
                arg = level_to_arg(name, mag, rng, ra.translate_pct)
                out[cols.op(layer)] = k
                out[cols.arg(layer)] = 0.0 if arg is None else arg
                if name in GEOMETRIC_OPS:
                    out[cols.affine(layer)] = affine_data(name, arg, w, h)
        if cols.boxes:
            out[cols.erase] = erase_params(rng, s)
        return out


def rrc_params(rng: random.Random, img_h: int, img_w: int, scale: Sequence[float],
               ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """timm's ``RandomResizedCropAndInterpolation.get_params``: ``(top, left, h, w)``."""
    area = img_w * img_h
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        aspect = math.exp(rng.uniform(*log_ratio))
        tw = int(round(math.sqrt(target_area * aspect)))
        th = int(round(math.sqrt(target_area / aspect)))
        if tw <= img_w and th <= img_h:
            return rng.randint(0, img_h - th), rng.randint(0, img_w - tw), th, tw
    in_ratio = img_w / img_h
    if in_ratio < min(ratio):
        tw, th = img_w, int(round(img_w / min(ratio)))
    elif in_ratio > max(ratio):
        th, tw = img_h, int(round(img_h * max(ratio)))
    else:
        tw, th = img_w, img_h
    return (img_h - th) // 2, (img_w - tw) // 2, th, tw


def erase_params(rng: random.Random, s: TrainSpec) -> np.ndarray:
    """timm's ``RandomErasing._erase`` box draws for a ``s.size`` image: ``s.re_count`` rows of
    ``[top, left, h, w]`` (``h = 0``: no box)."""
    out = np.zeros((s.re_count, 4), dtype=np.float64)
    if rng.random() > s.re_prob:
        return out.ravel()
    img_h, img_w = s.size
    area = img_h * img_w
    count = 1 if s.re_count == 1 else rng.randint(1, s.re_count)
    log_aspect = (math.log(s.re_min_aspect), math.log(1 / s.re_min_aspect))
    for c in range(count):
        for _ in range(10):
            target = rng.uniform(s.re_min_area, s.re_max_area) * area / count
            aspect = math.exp(rng.uniform(*log_aspect))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < img_w and h < img_h:
                out[c] = (rng.randint(0, img_h - h), rng.randint(0, img_w - w), h, w)
                break
    return out.ravel()


def spec_from_aug(aug: dict[str, Any], size: tuple[int, int]) -> TrainSpec:
    """A :class:`TrainSpec` from :func:`pitvit.data.resolve_aug`'s settings.

    Raises:
        ConfigError: a setting the GPU pipeline does not implement (crop other than ``rrc``, AutoAugment).
    """
    if aug["crop"] != "rrc":
        raise ConfigError(f"the GPU pipeline implements crop='rrc' only, got {aug['crop']!r}; "
                         f"use data.pipeline=cpu")
    ra = parse_rand_augment(aug["auto_augment"]) if aug["auto_augment"] else None
    if aug["re_mode"] not in ("pixel", "rand", "const", ""):
        raise ConfigError(f"unknown erasing mode {aug['re_mode']!r}; valid: pixel, rand, const")
    return TrainSpec(size=tuple(size), scale=tuple(aug["scale"]), ratio=tuple(aug["ratio"]),
                     hflip=float(aug["hflip"]), rand_augment=ra, re_prob=float(aug["re_prob"]),
                     re_mode=aug["re_mode"] or "const", re_count=int(aug["re_count"]))
