"""The recipe's image transforms, built from timm's and torchvision's pieces.

Training (DeiT's pipeline, which PiT's official recipe used, FACTS §3): RandomResizedCrop (bicubic,
scale 0.08-1, ratio 3/4-4/3), horizontal flip 0.5, RandAugment ``rand-m9-mstd0.5-inc1``, ToTensor,
Normalize, RandomErasing 0.25 in pixel mode. The Paddle reproduction's variant swaps RandAugment for
AutoAugment's ``original`` policy, drops the flip and crops with scale 0.05-1. Small grayscale images (the
Fashion-MNIST demo) get a padded random crop and a flip only.

Evaluation: resize the shorter side to ``int(size / crop_pct)`` (bicubic), center crop ``size``, ToTensor,
Normalize.

The random pieces draw from python ``random``, numpy and torch's default generator; the loader seeds all
three per sample (:class:`pitvit.data.loader.SeededDataset`), so augmentations do not depend on workers.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import random

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as _timm_aa
from timm.data.auto_augment import auto_augment_transform, rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from pitvit.utils.errors import ConfigError

__all__ = ["AUG_PRESETS", "AUG_SETTINGS", "resolve_aug", "size_hw", "fill_color", "build_transform", "ToMode",
           "ResizeCenterCrop", "RandomPadCropFlip", "ToNormalizedTensor"]

# Named training augmentations; a dict passed as ``aug`` starts from ``aug.get("preset", "official")``.
AUG_PRESETS: dict[str, dict[str, Any]] = {
    # PiT's official recipe (DeiT's pipeline)
    "official": dict(crop="rrc", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), padding=0, hflip=0.5,
                     auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, re_mode="pixel", re_count=1),
    # what the Paddle reproduction ran: AutoAugment (original policy), no flip, crop scale 0.05-1
    "paddle": dict(crop="rrc", scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3), padding=0, hflip=0.0,
                   auto_augment="original", re_prob=0.25, re_mode="pixel", re_count=1),
    # small images such as Fashion-MNIST's 28 px: pad by 2, random crop back, flip
    "small": dict(crop="pad", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), padding=2, hflip=0.5,
                  auto_augment=None, re_prob=0.0, re_mode="pixel", re_count=1),
    # no augmentation: the evaluation transform's geometry at training time
    "none": dict(crop="center", scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), padding=0, hflip=0.0,
                 auto_augment=None, re_prob=0.0, re_mode="pixel", re_count=1),
}
AUG_SETTINGS = tuple(AUG_PRESETS["official"])  # what a preset sets, and so what a recipe's aug section may change
_CROPS = ("rrc", "pad", "center")
_RE_MODES = ("const", "rand", "pixel")  # timm RandomErasing
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "box", "hamming", "lanczos")  # both PIL and torchvision


def resolve_aug(aug: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The full training-augmentation settings for a preset name, a dict of overrides, or ``None``.

    A dict may name its base with ``preset`` (default ``official``); every other key overrides a setting.
    ``auto_augment`` of ``None``, ``""`` or ``"none"`` disables RandAugment/AutoAugment.

    Raises:
        ConfigError: an unknown preset or key (the message lists the valid ones).
    """
    if aug is None:
        aug = "official"
    if isinstance(aug, str):
        aug = {"preset": aug}
    aug = dict(aug)
    preset = aug.pop("preset", "official")
    if preset not in AUG_PRESETS:
        raise ConfigError(f"unknown augmentation preset {preset!r}; valid: {', '.join(AUG_PRESETS)}")
    out = dict(AUG_PRESETS[preset])
    unknown = sorted(set(aug) - set(out))
    if unknown:
        raise ConfigError(f"unknown augmentation setting(s) {unknown}; valid: {['preset'] + sorted(out)}")
    out.update(aug)
    if out["crop"] not in _CROPS:
        raise ConfigError(f"unknown crop {out['crop']!r}; valid: {', '.join(_CROPS)}")
    if out["auto_augment"] in ("", "none", "None"):
        out["auto_augment"] = None
    if out["re_mode"] not in _RE_MODES:
        raise ConfigError(f"unknown random-erasing mode {out['re_mode']!r}; valid: {', '.join(_RE_MODES)}")
    for k in ("scale", "ratio"):
        if len(out[k]) != 2 or not 0 < out[k][0] <= out[k][1]:
            raise ConfigError(f"aug {k} must be a (low, high) pair with 0 < low <= high, got {out[k]}")
    for k in ("hflip", "re_prob"):
        if not 0 <= out[k] <= 1:
            raise ConfigError(f"aug {k} is a probability, in [0, 1]; got {out[k]}")
    if out["padding"] < 0 or out["re_count"] < 1:
        raise ConfigError(f"aug padding must be >= 0 and re_count >= 1; got {out['padding']} and {out['re_count']}")
    out["scale"], out["ratio"] = tuple(out["scale"]), tuple(out["ratio"])
    return out


class ToMode:
    """Convert a PIL image to ``mode`` (``L`` or ``RGB``) when it is in another one."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mode!r})"


class ResizeCenterCrop:
    """Resize (the shorter side to an int, or to an exact ``(h, w)``), then center crop ``crop`` (h, w).

    Either step is skipped when the image already has its output size (Fashion-MNIST at 28 px pays for
    neither).
    """

    def __init__(self, resize: int | tuple[int, int], crop: tuple[int, int], interpolation: str) -> None:
        self.resize = resize
        self.crop = tuple(crop)
        self.interpolation = T.InterpolationMode(interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        if (h, w) == self.crop and (min(h, w) == self.resize or self.resize == self.crop):
            return img
        img = TF.resize(img, self.resize, interpolation=self.interpolation)  # returns img when already sized
        if (img.height, img.width) != self.crop:
            img = TF.center_crop(img, list(self.crop))
        return img

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(resize={self.resize}, crop={self.crop}, "
                f"interpolation={self.interpolation.value})")


class RandomPadCropFlip:
    """Pad with zeros by ``padding`` on each side, crop ``size`` (h, w) at a random place, flip horizontally
    with probability ``hflip``; the small-image augmentation, done on a numpy array.

    Takes a PIL image (or an array) of at least ``size - 2 * padding`` per side and returns a uint8 array
    ``(h, w[, C])``. Draws from python ``random``.
    """

    def __init__(self, size: tuple[int, int], padding: int, hflip: float) -> None:
        self.size = tuple(size)
        self.padding = int(padding)
        self.hflip = float(hflip)

    def __call__(self, img: Image.Image | np.ndarray) -> np.ndarray:
        a = np.asarray(img)
        h, w = a.shape[:2]
        th, tw = self.size
        p = self.padding
        if h + 2 * p < th or w + 2 * p < tw:
            raise ValueError(f"a {h}x{w} image padded by {p} cannot be cropped to {th}x{tw}")
        y0 = random.randint(0, h + 2 * p - th) - p  # the crop's top-left corner in image coordinates
        x0 = random.randint(0, w + 2 * p - tw) - p
        out = np.zeros((th, tw) + a.shape[2:], dtype=a.dtype)
        sy0, sy1, sx0, sx1 = max(y0, 0), min(y0 + th, h), max(x0, 0), min(x0 + tw, w)
        if sy1 > sy0 and sx1 > sx0:
            out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = a[sy0:sy1, sx0:sx1]
        if self.hflip > 0 and random.random() < self.hflip:
            out = out[:, ::-1]
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding}, hflip={self.hflip})"


class ArrayToPIL:
    """A uint8 array ``(H, W)`` or ``(H, W, 3)`` back to a PIL image (before PIL-only augmentations)."""

    def __call__(self, a: np.ndarray | Image.Image) -> Image.Image:
        return a if isinstance(a, Image.Image) else Image.fromarray(np.ascontiguousarray(a))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ToNormalizedTensor:
    """PIL ``L``/``RGB`` image (or uint8 array ``(H, W[, C])``) to a float tensor ``(C, H, W)`` holding
    ``(pixel / 255 - mean) / std``.

    The same float32 operations as torchvision's ``ToTensor`` then ``Normalize`` (bit-identical results),
    done in one numpy pass: several times faster on small images, where per-op overhead dominates.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, img: Image.Image | np.ndarray) -> torch.Tensor:
        a = np.asarray(img)
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        if a.shape[0] != len(self.mean):
            raise ValueError(f"image has {a.shape[0]} channel(s), normalization expects {len(self.mean)}")
        x = np.ascontiguousarray(a, dtype=np.float32)
        x /= np.float32(255)
        x -= self.mean
        x /= self.std
        return torch.from_numpy(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()})"


def size_hw(input_size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int, ``(H, W)`` or ``(C, H, W)`` (``PretrainedCfg.input_size``).

    Raises:
        ConfigError: any other shape.
    """
    if isinstance(input_size, int):
        return input_size, input_size
    size = tuple(int(s) for s in input_size)
    if len(size) == 3:
        size = size[1:]
    if len(size) != 2:
        raise ConfigError(f"input_size must be an int, (height, width) or (channels, height, width); "
                          f"got {input_size!r}")
    return size


def fill_color(mean: Sequence[float]) -> tuple[int, ...]:
    """The fill of RandAugment's and AutoAugment's geometric ops, as timm's ``create_transform`` sets it: the
    mean colour in 0..255."""
    return tuple(min(255, round(255 * m)) for m in mean)


def build_transform(
    is_train: bool,
    *,
    input_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    in_chans: int | None = None,
    aug: str | Mapping[str, Any] | None = None,
) -> T.Compose:
    """The training or evaluation transform: PIL image in, normalized ``(in_chans, H, W)`` float tensor out.

    Args:
        is_train: the augmenting training transform, or the deterministic evaluation one.
        input_size: output size: an int, ``(H, W)``, or ``(C, H, W)`` as in ``PretrainedCfg.input_size``.
        mean: per-channel mean, one value per channel.
        std: per-channel standard deviation, one value per channel.
        interpolation: resize filter (``bicubic``, ``bilinear``, ``nearest``...).
        crop_pct: evaluation resizes to ``int(size / crop_pct)`` before the center crop.
        in_chans: 1 (grayscale) or 3 (RGB); images are converted to match. Default: ``input_size[0]``
            when ``input_size`` has three entries, else ``len(mean)``.
        aug: training augmentation: a preset name (``official``, ``paddle``, ``small``, ``none``), a
            dict of overrides (see :func:`resolve_aug`), or ``None`` for ``official``. Ignored for eval.

    Raises:
        ConfigError: inconsistent channels, sizes or augmentation settings.
    """
    h, w = size_hw(input_size)
    if in_chans is None:
        in_chans = int(input_size[0]) if not isinstance(input_size, int) and len(input_size) == 3 else len(mean)
    elif not isinstance(input_size, int) and len(input_size) == 3 and int(input_size[0]) != in_chans:
        raise ConfigError(f"in_chans={in_chans} disagrees with input_size={tuple(input_size)}")
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans must be 1 or 3, got {in_chans}")
    if len(mean) != in_chans or len(std) != in_chans:
        raise ConfigError(f"mean and std need {in_chans} value(s) each for in_chans={in_chans}; "
                         f"got mean={tuple(mean)}, std={tuple(std)}")
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct must lie in (0, 1], got {crop_pct}")
    if not all(s > 0 for s in std):
        raise ConfigError(f"std must be positive, got {tuple(std)}")
    if interpolation not in _INTERPOLATIONS:
        raise ConfigError(f"unknown interpolation {interpolation!r}; valid: {', '.join(_INTERPOLATIONS)}")
    pil_interp = str_to_pil_interp(interpolation)
    size = (h, w)
    first: list[Any] = [ToMode("L" if in_chans == 1 else "RGB")]
    normalize = [ToNormalizedTensor(mean, std)]
    eval_geometry = [ResizeCenterCrop(int(h / crop_pct) if h == w else (int(h / crop_pct), int(w / crop_pct)),
                                      size, interpolation)]
    if not is_train:
        out = T.Compose(first + eval_geometry + normalize)
        out.uses_numpy_rng = False
        return out

    a = resolve_aug(aug)
    if a["crop"] == "rrc":
        geometry = [RandomResizedCropAndInterpolation(size, scale=a["scale"], ratio=a["ratio"],
                                                      interpolation=interpolation)]
    elif a["crop"] == "pad":
        # flip folded in: the array path avoids PIL round trips, the bulk of the cost on 28 px images
        geometry = [ResizeCenterCrop(h if h == w else size, size, interpolation),
                    RandomPadCropFlip(size, a["padding"], a["hflip"])]
        if a["auto_augment"]:
            geometry.append(ArrayToPIL())
    else:
        geometry = eval_geometry
    if a["hflip"] > 0 and a["crop"] != "pad":
        geometry.append(T.RandomHorizontalFlip(p=a["hflip"]))
    color: list[Any] = []
    if a["auto_augment"]:
        # the hyper-parameters timm's create_transform passes: fill with the mean colour, translate by
        # 45% of the image, resize with the recipe's filter
        hparams = dict(translate_const=int(min(h, w) * 0.45),
                       img_mean=fill_color(mean),
                       interpolation=pil_interp)
        name = a["auto_augment"]
        try:
            policy = rand_augment_transform(name, hparams) if name.startswith("rand") else \
                auto_augment_transform(name, hparams)
        except (AssertionError, KeyError, ValueError) as e:  # timm asserts on a policy it does not know
            raise ConfigError(f"auto_augment {name!r} is not a policy timm knows (e.g. rand-m9-mstd0.5-inc1, "
                              f"original, v0; or none): {e}") from None
        color.append(_posterize_zero_bits_safe(policy))
    erase = []
    if a["re_prob"] > 0:
        erase.append(RandomErasing(a["re_prob"], mode=a["re_mode"], max_count=a["re_count"], device="cpu"))
    out = T.Compose(first + geometry + color + normalize + erase)
    # timm's RandAugment picks its ops with numpy; nothing else here draws from numpy. Saving and restoring
    # numpy's global state costs ~0.2 ms a sample, so the loader skips it when this says it may.
    out.uses_numpy_rng = bool(a["auto_augment"]) and a["auto_augment"].startswith(("rand", "augmix"))
    return out


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs: Any) -> Image.Image:
    """timm's posterize, except that keeping 0 bits gives the black image Pillow < 13 returned.

    ``PosterizeIncreasing`` at magnitude 10 asks for 0 bits; Pillow 13 raises on that (about one training
    sample in 750 under ``rand-m9-mstd0.5-inc1``), earlier versions masked every bit away.
    """
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return _timm_aa.posterize(img, bits_to_keep, **kwargs)


def _posterize_zero_bits_safe(transform: Any) -> Any:
    """Swap timm's posterize for :func:`_posterize` in a RandAugment or AutoAugment transform."""
    ops = list(getattr(transform, "ops", []))
    for sub_policy in getattr(transform, "policy", []):
        ops.extend(sub_policy)
    for op in ops:
        if getattr(op, "aug_fn", None) is _timm_aa.posterize:
            op.aug_fn = _posterize
    return transform

