"""One batch through the device: decode, crop/resize, RandAugment, normalize, erase (training) or
resize + center crop + normalize (evaluation)."""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

from pitvit.utils.errors import ConfigError

from ..images import SkippedSample
from . import ops
from .params import GEOMETRIC_OPS, TrainSpec
from .source import EncodedBatch, decode_with_pil

__all__ = ["DevicePipeline", "decode_batch", "eval_geometry"]


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 warns that its decoders move to TorchCodec
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_batch(batch: EncodedBatch, device: torch.device, *, strict: bool = False, allow_fallback: bool = True
                 ) -> tuple[list[torch.Tensor | None], list[str], list[SkippedSample]]:
    """Decode a worker's batch on ``device``: ``(images, fallback_reasons, skipped)``.

    ``images[i]`` is a ``(3, H, W)`` uint8 tensor, or ``None`` when neither the device nor PIL could decode it.
    Device-decodable JPEGs go through one batched ``decode_jpeg`` call (nvjpeg on CUDA, libjpeg-turbo on the
    CPU); if the batch call fails they are retried one by one, and a file the device rejects is decoded with PIL
    (reason ``device_error``). Fallback pixels decoded by the workers are copied to the device.
    """
    n = len(batch)
    out: list[torch.Tensor | None] = [None] * n
    reasons: list[str] = []
    skipped: list[SkippedSample] = []
    enc = [i for i, k in enumerate(batch.kinds) if k == "device"]
    if enc:
        try:
            for i, im in zip(enc, _decode_jpegs([batch.data[i] for i in enc], device)):
                out[i] = im if im.shape[0] == 3 else im.expand(3, -1, -1)  # gray: RGB mode gives 3 already
        except RuntimeError:
            for i in enc:
                try:
                    im = _decode_jpegs([batch.data[i]], device)[0]
                    out[i] = im if im.shape[0] == 3 else im.expand(3, -1, -1)
                except RuntimeError:
                    if not allow_fallback:
                        raise
                    pixels = decode_with_pil(batch.data[i].numpy().tobytes(), batch.paths[i], strict)
                    if isinstance(pixels, SkippedSample):
                        skipped.append(pixels)
                        continue
                    batch.data[i], batch.kinds[i] = pixels, "device_error"
    for i, k in enumerate(batch.kinds):
        if k != "device":
            reasons.append(k)
            out[i] = ops.to_device(batch.data[i], device).permute(2, 0, 1)
    return out, reasons, skipped


def _resized_size(h: int, w: int, resize: int | tuple[int, int]) -> tuple[int, int]:
    # torchvision's resize rule for an int: the shorter side becomes `resize`, the longer int(resize * long / short)
    if not isinstance(resize, int):
        return resize
    if w <= h:
        return int(resize * h / w), resize
    return resize, int(resize * w / h)


def eval_geometry(h: int, w: int, resize: int | tuple[int, int], crop: tuple[int, int], support: float = 2.0
                  ) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """Per axis ``(window_start, window_end, total, offset)`` for resizing an ``h x w`` image as torchvision
    resizes PIL images (to ``total`` pixels), then center cropping ``crop`` (torchvision's rounding: the kept
    pixels start at ``offset``); the window is the part of the input those pixels read."""
    rh, rw = _resized_size(h, w, resize)
    axes = []
    for size, total, out in ((h, rh, crop[0]), (w, rw, crop[1])):
        offset = int(round((total - out) / 2.0))
        scale = size / total
        reach = support * max(scale, 1.0) + 1
        lo = max(0, int((offset + 0.5) * scale - reach))
        hi = min(size, int((offset + out - 0.5) * scale + reach) + 1)
        axes.append((lo, hi, total, offset))
    return axes[0], axes[1]


class DevicePipeline:
    """The pixel work of the GPU pipeline for one process.

    Args:
        device: where the work happens.
        size: output ``(h, w)``.
        mean, std: normalization (0..1 scale).
        spec: training augmentation (parameters come with the batch), or ``None`` for evaluation.
        resize: evaluation resize (an int for the shorter side, or ``(h, w)``); ignored in training.
        interpolation: ``bicubic`` (the recipe) or ``bilinear`` for the crop/resize.
        fill: RandAugment's fill colour (0..255).
        max_elements: bound on the float copy of a group of decoded images (see :func:`ops.resample`).
        exact_resample: crop/resize with Pillow's fixed-point arithmetic in float64 (equal to Pillow), or in
            float32 (within a level; for GPUs with slow float64).
    """

    def __init__(self, *, device: torch.device, size: tuple[int, int], mean: Sequence[float], std: Sequence[float],
                 spec: TrainSpec | None, resize: int | tuple[int, int] | None = None, interpolation: str = "bicubic",
                 fill: Sequence[int] = (128, 128, 128), max_elements: int = 1 << 25, strict_images: bool = False,
                 allow_fallback: bool = True, exact_resample: bool = True) -> None:
        if interpolation not in ops.FILTER_SUPPORT:
            raise ConfigError(f"the GPU pipeline resizes with {sorted(ops.FILTER_SUPPORT)}, got {interpolation!r}; "
                             f"use data.pipeline=cpu")
        if spec is not None and spec.rand_augment is not None and interpolation != "bicubic":
            raise ConfigError("the GPU pipeline's RandAugment implements bicubic geometric ops only; "
                              "use data.pipeline=cpu")
        self.device = torch.device(device)
        self.size = tuple(size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device)
        self.spec = spec
        self.resize = resize
        self.interpolation = interpolation
        self.fill = tuple(float(v) for v in fill)
        self.max_elements = max_elements
        self.strict_images = strict_images
        self.allow_fallback = allow_fallback
        self.exact_resample = exact_resample

    def __call__(self, batch: EncodedBatch, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str], list[SkippedSample]]:
        """``(images, labels, fallback_reasons, skipped)``; images ``None`` when nothing was readable."""
        images, reasons, skipped = decode_batch(batch, self.device, strict=self.strict_images,
                                                allow_fallback=self.allow_fallback)
        keep = [i for i, im in enumerate(images) if im is not None]
        skipped = list(batch.skipped) + skipped
        if not keep:
            return None, None, reasons, skipped
        images = [images[i] for i in keep]
        labels = ops.to_device(batch.labels[keep], self.device)
        if self.spec is None:
            x = self._eval(images)
        else:
            keys = batch.keys[keep] if getattr(batch, "keys", None) is not None else None
            x = self._train(images, batch.params[keep], generator, keys)
        return x, labels, reasons, skipped

    # ------------------------------------------------------------------------------------------ evaluation
    def _eval(self, images: list[torch.Tensor]) -> torch.Tensor:
        support = ops.FILTER_SUPPORT[self.interpolation]
        views, ys, xs = [], ([], [], [], []), ([], [], [], [])
        for im in images:
            h, w = im.shape[1:]
            (ylo, yhi, ytot, yoff), (xlo, xhi, xtot, xoff) = eval_geometry(h, w, self.resize, self.size, support)
            views.append(im[:, ylo:yhi, xlo:xhi])
            for dst, v in zip(ys, (ylo, h, ytot, yoff)):
                dst.append(float(v))
            for dst, v in zip(xs, (xlo, w, xtot, xoff)):
                dst.append(float(v))
        x = ops.resample(views, ops.AxisPlan(*ys), ops.AxisPlan(*xs), self.size, filter=self.interpolation,
                         max_elements=self.max_elements, exact=self.exact_resample)
        return ops.normalize(x, self.mean, self.std)

    # ------------------------------------------------------------------------------------------ training
    def _train(self, images: list[torch.Tensor], params: torch.Tensor, generator: torch.Generator | None,
               keys: torch.Tensor | None = None) -> torch.Tensor:
        s, cols = self.spec, self.spec.layout
        p = params.tolist()
        views = []
        for im, row in zip(images, p):
            top, left, h, w = (int(v) for v in row[cols.CROP])
            views.append(im[:, top:top + h, left:left + w])
        n = len(views)
        zeros = [0.0] * n
        ys = ops.AxisPlan(zeros, [float(v.shape[1]) for v in views], [float(s.size[0])] * n, zeros)
        xs = ops.AxisPlan(zeros, [float(v.shape[2]) for v in views], [float(s.size[1])] * n, zeros)
        x = ops.resample(views, ys, xs, s.size, flip=[row[cols.FLIP] > 0.5 for row in p], filter=self.interpolation,
                         max_elements=self.max_elements, exact=self.exact_resample)
        if s.rand_augment is not None:
            x = self._rand_augment(x, params)
        x = ops.normalize(x, self.mean, self.std)
        if cols.boxes:
            # the noise keyed per sample when the batch carries keys (any batch split gives the same images)
            ops.erase(x, params[:, cols.erase].reshape(n, cols.boxes, 4), s.re_mode, generator, keys)
        return x

    def _rand_augment(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        names = self.spec.rand_augment.ops
        cols = self.spec.layout
        geo = [k for k, name in enumerate(names) if name in GEOMETRIC_OPS]
        for layer in range(cols.num_layers):
            op = params[:, cols.op(layer)].long()
            groups: list[tuple[str, torch.Tensor]] = []
            sel = torch.isin(op, torch.tensor(geo)).nonzero().squeeze(1)
            if len(sel):
                groups.append(("affine", sel))
            for k in sorted(set(op.tolist()) - set(geo) - {-1}):
                groups.append((names[k], (op == k).nonzero().squeeze(1)))
            for name, sel in groups:
                idx = ops.to_device(sel, self.device)
                xs = x.index_select(0, idx)
                if name == "affine":
                    ys = ops.affine(xs, params[sel, cols.affine(layer)], self.fill)
                else:
                    ys = ops.OP_FUNCTIONS[name](xs, params[sel, cols.arg(layer)])
                x.index_copy_(0, idx, ys)
        return x
