"""The recipe's pixel operations on a batch, on any torch device, matching Pillow's arithmetic.

Images travel as float32 tensors holding integer values 0..255 (what a uint8 PIL image holds) until
:func:`normalize`; every op computes and rounds as Pillow does, so on the same input pixels the results equal
Pillow's (the tests measure it on real photos).

- :func:`resample`: crop + resize (+ flip) of variable-sized images as two batched matrix products with
  Pillow's antialiased filter coefficients in its 22-bit fixed point (``ImagingResample``: one pass, rounding
  to uint8, the other pass, in the installed Pillow's order), chunked so that memory stays bounded whatever the
  image sizes.
- RandAugment ops (timm's ``auto_augment``; Cubuk et al. 2020): ``affine`` emulates Pillow's
  ``Image.transform(AFFINE, BICUBIC)`` (cubic a=-1 on clamped 4x4 taps, truncation, fill outside), the others
  Pillow's ``ImageOps``/``ImageEnhance`` lookup tables and blends. Each takes per-sample arguments.
- :func:`normalize` and :func:`erase` (Zhong et al. 2020, timm's ``RandomErasing`` boxes).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from pitvit.utils.keyed import hash_keys, uniform_from_keys

__all__ = ["to_device", "AxisPlan", "axis_weights", "vertical_first", "resample", "affine", "autocontrast",
           "equalize", "invert", "posterize", "solarize", "solarize_add", "color", "contrast", "brightness",
           "sharpness", "OP_FUNCTIONS", "normalize", "erase", "keyed_normal"]

FILTER_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}

try:
    from PIL import __version__ as _PIL_VERSION
    _PILLOW_MAJOR = int(_PIL_VERSION.split(".")[0])
except (ImportError, ValueError):  # pragma: no cover
    _PILLOW_MAJOR = 0


def vertical_first(h_in: int, w_in: int, h_out: int, w_out: int, pillow_major: int | None = None) -> bool:
    """Whether Pillow runs the vertical pass first for this resize.

    Every Pillow up to 12 resamples horizontally, then vertically. Pillow 13 (PR #9549) goes vertical first when
    the height is reduced by more than twice as many pixels as the width (measured on 300 random shapes, all
    agreeing). The order matters for exactness: Pillow rounds to uint8 between the passes. The installed
    Pillow's rule is used, so that the GPU pipeline matches the CPU pipeline it runs beside.
    """
    major = _PILLOW_MAJOR if pillow_major is None else pillow_major
    return major >= 13 and h_in > h_out and (h_in - h_out) > 2 * (w_in - w_out)


def to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small host tensor on ``device`` without stalling the host: on CUDA it goes through pinned memory with
    an asynchronous copy (a plain copy from pageable memory would wait for the stream's queued work)."""
    if dtype is not None:
        t = t.to(dtype)
    if t.device == device or device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _bicubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    # Pillow's resampling cubic (a = -0.5), Resample.c bicubic_filter
    t = t.abs()
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = (((t - 5.0) * t + 8.0) * t - 4.0) * a
    return torch.where(t < 1.0, near, torch.where(t < 2.0, far, torch.zeros_like(t)))


def _triangle(t: torch.Tensor) -> torch.Tensor:
    t = t.abs()
    return torch.where(t < 1.0, 1.0 - t, torch.zeros_like(t))


_FILTERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"bicubic": _bicubic, "bilinear": _triangle}


class AxisPlan:
    """Per-sample geometry of one axis: output pixels ``offset .. offset + count - 1`` of a ``total``-pixel
    resampling of an input axis of ``length`` pixels, of which the tensor holds the slice starting at ``origin``
    (0 when the tensor holds the whole axis)."""

    __slots__ = ("origin", "length", "total", "offset")

    def __init__(self, origin: Sequence[float], length: Sequence[float], total: Sequence[float],
                 offset: Sequence[float]) -> None:
        self.origin, self.length, self.total, self.offset = origin, length, total, offset


PRECISION_BITS = 22  # Pillow's fixed-point resampling coefficients (32 - 8 - 2 bits)


def axis_weights(origin: torch.Tensor, length: torch.Tensor, total: torch.Tensor, offset: torch.Tensor, count: int,
                 in_size: int, flip: torch.Tensor | None = None, filter: str = "bicubic", exact: bool = True
                 ) -> torch.Tensor:
    """Pillow's antialiased resampling coefficients as a dense ``(n, count, in_size)`` matrix.

    Pillow's ``precompute_coeffs`` step by step in float64: output pixel ``i`` is centred at
    ``(i + 0.5) * scale`` (``scale = length / total``), the filter is stretched by ``max(scale, 1)`` over the
    window Pillow computes, each row is normalized to sum 1. ``exact`` returns Pillow's 22-bit fixed-point
    integers (float64), which make the products exact; otherwise float32 fractions. ``flip`` (bool, per sample)
    reverses the output order.
    """
    dev = origin.device
    f64 = torch.float64
    origin, length, total, offset = (v.to(dev, f64)[:, None, None] for v in (origin, length, total, offset))
    scale = length / total
    fscale = scale.clamp(min=1.0)
    support = FILTER_SUPPORT[filter] * fscale
    inv = torch.ones_like(fscale) / fscale
    center = (offset + torch.arange(count, device=dev, dtype=f64)[None, :, None] + 0.5) * scale
    lo = torch.trunc(center - support + 0.5).clamp(min=0.0)
    hi = torch.minimum(torch.trunc(center + support + 0.5), length)
    x = origin + torch.arange(in_size, device=dev, dtype=f64)[None, None, :]
    w = _FILTERS[filter](((x - center) + 0.5) * inv) * ((x >= lo) & (x < hi))
    total_w = w.sum(-1, keepdim=True)
    w = torch.where(total_w != 0, w / torch.where(total_w != 0, total_w, torch.ones_like(total_w)), w)
    if exact:
        w = w * float(1 << PRECISION_BITS)
        w = torch.where(w < 0, torch.ceil(w - 0.5), torch.floor(w + 0.5))
    else:
        w = w.float()
    if flip is not None:
        w = torch.where(flip.to(dev)[:, None, None], w.flip(1), w)
    return w


def _round_u8(x: torch.Tensor, exact: bool) -> torch.Tensor:
    if exact:  # Pillow: (sum + half) >> PRECISION_BITS, clipped; exact in float64 (|sum| < 2**53)
        return x.add_(float(1 << (PRECISION_BITS - 1))).mul_(1.0 / (1 << PRECISION_BITS)).floor_().clamp_(0.0, 255.0)
    return x.add_(0.5).floor_().clamp_(0.0, 255.0)


def _weights(p: AxisPlan, idx: list[int], count: int, in_size: int, flip, device, filter: str,
             exact: bool) -> torch.Tensor:
    cols = [[getattr(p, k)[i] for i in idx] for k in AxisPlan.__slots__]
    cols.append([float(bool(flip[i])) if flip is not None else 0.0 for i in idx])
    t = to_device(torch.tensor(cols, dtype=torch.float64), device)  # one asynchronous copy per group
    fl = t[4] > 0.5 if flip is not None else None
    return axis_weights(t[0], t[1], t[2], t[3], count, in_size, fl, filter, exact)


def resample(images: Sequence[torch.Tensor], ys: AxisPlan, xs: AxisPlan, out_size: tuple[int, int], *,
             flip: Sequence[bool] | None = None, filter: str = "bicubic", max_elements: int = 1 << 25,
             exact: bool = True, out: torch.Tensor | None = None) -> torch.Tensor:
    """Resample each ``(C, h_i, w_i)`` uint8 (or integer-valued float) image to ``out_size`` as planned by
    ``ys``/``xs``; returns ``(n, C, oh, ow)`` float32 holding integers 0..255.

    Images are grouped by size and zero-padded within a group whose padded float copy holds at most
    ``max_elements`` values; an image larger than that alone is processed in bands (exact: each pass is
    separable), so memory stays bounded however large a decoded image is. The order of the two passes follows
    the installed Pillow (:func:`vertical_first`, decided on each image's span ``length -> total``).

    ``exact`` computes as Pillow does, with 22-bit integer coefficients and sums held exactly in float64 (equal
    to Pillow up to a tie in the last bit of a coefficient); otherwise float32 fractions (within a level, faster
    where float64 is slow, and subject to TF32 when that is enabled).
    """
    n = len(images)
    oh, ow = out_size
    if n == 0:
        raise ValueError("resample needs at least one image")
    c = images[0].shape[0]
    device = images[0].device
    if out is None:
        out = torch.empty(n, c, oh, ow, dtype=torch.float32, device=device)
    vfirst = [vertical_first(int(ys.length[i]), int(xs.length[i]), int(ys.total[i]), int(xs.total[i]))
              for i in range(n)]
    order = sorted(range(n), key=lambda i: (vfirst[i], images[i].shape[1], images[i].shape[2]))
    group: list[int] = []
    gh = gw = 0

    def flush() -> None:
        if group:
            _resample_group(images, group, ys, xs, (oh, ow), flip, filter, out, vfirst[group[0]], exact)

    for i in order:
        h, w = images[i].shape[1:]
        if c * h * w > max_elements:
            _resample_banded(images[i], i, ys, xs, (oh, ow), flip, filter, max_elements, out, vfirst[i], exact)
            continue
        nh, nw = max(gh, h), max(gw, w)
        if group and (vfirst[group[0]] != vfirst[i] or (len(group) + 1) * c * nh * nw > max_elements):
            flush()
            group, nh, nw = [], h, w
        group.append(i)
        gh, gw = nh, nw
    flush()
    return out


def _resample_group(images, idx, ys, xs, out_size, flip, filter, out, vfirst: bool, exact: bool) -> None:
    oh, ow = out_size
    c = images[idx[0]].shape[0]
    hm = max(images[i].shape[1] for i in idx)
    wm = max(images[i].shape[2] for i in idx)
    device = images[idx[0]].device
    dtype = torch.float64 if exact else torch.float32
    x = torch.zeros(len(idx), c, hm, wm, dtype=dtype, device=device)
    for k, i in enumerate(idx):
        im = images[i]
        x[k, :, :im.shape[1], :im.shape[2]].copy_(im)
    wx = _weights(xs, idx, ow, wm, flip, device, filter, exact)                # (n, ow, wm)
    wy = _weights(ys, idx, oh, hm, None, device, filter, exact)                # (n, oh, hm)
    if vfirst:
        tmp = _round_u8(torch.matmul(wy[:, None], x), exact)                   # vertical pass (n, c, oh, wm)
        y = _round_u8(torch.matmul(tmp, wx[:, None].transpose(2, 3)), exact)   # horizontal pass
    else:
        tmp = torch.bmm(x.view(len(idx), c * hm, wm), wx.transpose(1, 2))     # horizontal pass
        tmp = _round_u8(tmp, exact).view(len(idx), c, hm, ow)                  # Pillow keeps uint8 between passes
        y = _round_u8(torch.matmul(wy[:, None], tmp), exact)                   # vertical pass
    out[to_device(torch.tensor(idx), device)] = y.to(out.dtype)


def _resample_banded(im, i, ys, xs, out_size, flip, filter, max_elements, out, vfirst: bool, exact: bool) -> None:
    oh, ow = out_size
    c, h, w = im.shape
    device = im.device
    dtype = torch.float64 if exact else torch.float32
    wx = _weights(xs, [i], ow, w, flip, device, filter, exact)[0]             # (ow, w)
    wy = _weights(ys, [i], oh, h, None, device, filter, exact)[0]             # (oh, h)
    if vfirst:  # bands of columns through the vertical pass
        tmp = torch.empty(c, oh, w, dtype=dtype, device=device)
        band = max(1, max_elements // (c * h))
        for c0 in range(0, w, band):
            tmp[:, :, c0:c0 + band] = _round_u8(wy @ im[:, :, c0:c0 + band].to(dtype), exact)
        out[i] = _round_u8(tmp @ wx.t(), exact).to(out.dtype)
        return
    tmp = torch.empty(c, h, ow, dtype=dtype, device=device)
    band = max(1, max_elements // (c * w))
    for r0 in range(0, h, band):
        tmp[:, r0:r0 + band] = _round_u8(im[:, r0:r0 + band].to(dtype) @ wx.t(), exact)
    out[i] = _round_u8(wy @ tmp, exact).to(out.dtype)


# ---------------------------------------------------------------------------------------------- RandAugment ops
def _cubic_pillow(v1, v2, v3, v4, d):
    # Pillow Geometry.c BICUBIC macro (cubic convolution with a = -1), in float64 like Pillow
    p2 = v3 - v1
    p3 = 2.0 * (v1 - v2) + v3 - v4
    p4 = (v2 - v1) + (v4 - v3)
    return v2 + d * (p2 + d * (p3 + d * p4))


def affine(x: torch.Tensor, coeffs: torch.Tensor, fill: Sequence[float]) -> torch.Tensor:
    """Pillow's ``Image.transform(size, AFFINE, coeffs, BICUBIC, fillcolor=fill)`` per sample.

    ``coeffs`` ``(n, 6)`` map output pixel centres to input positions (float64, as Pillow computes them).
    Output pixels whose source lies outside the image get ``fill``; others the a=-1 cubic of the 4x4 taps
    (edge-clamped), truncated to an integer.
    """
    n, c, h, w = x.shape
    dev = x.device
    a = to_device(coeffs, dev, torch.float64)
    yy = torch.arange(h, device=dev, dtype=torch.float64).view(1, h, 1) + 0.5
    xx = torch.arange(w, device=dev, dtype=torch.float64).view(1, 1, w) + 0.5
    xin = a[:, 0, None, None] * xx + a[:, 1, None, None] * yy + a[:, 2, None, None]
    yin = a[:, 3, None, None] * xx + a[:, 4, None, None] * yy + a[:, 5, None, None]
    outside = (xin < 0) | (xin >= w) | (yin < 0) | (yin >= h)
    xs, ys = xin - 0.5, yin - 0.5
    x0, y0 = torch.floor(xs), torch.floor(ys)
    dx, dy = (xs - x0)[:, None], (ys - y0)[:, None]
    x0 = x0.long().view(n, 1, h * w)
    y0 = y0.long().view(n, 1, h * w)
    flat = x.reshape(n, c, h * w)
    rows = []
    for j in range(4):
        yc = (y0 + (j - 1)).clamp_(0, h - 1) * w
        taps = [flat.gather(2, (yc + (x0 + (i - 1)).clamp(0, w - 1)).expand(n, c, h * w)).double().view(n, c, h, w)
                for i in range(4)]
        rows.append(_cubic_pillow(*taps, dx))
    v = _cubic_pillow(*rows, dy)
    v = torch.where(v <= 0.0, 0.0, torch.where(v >= 255.0, 255.0, v.trunc()))
    fillv = to_device(torch.tensor(list(fill), dtype=torch.float64), dev).view(1, c, 1, 1)
    return torch.where(outside[:, None], fillv, v).float()


def autocontrast(x: torch.Tensor, arg: torch.Tensor | None = None) -> torch.Tensor:
    """``ImageOps.autocontrast`` (no cutoff): per channel, stretch [min, max] to [0, 255] by a truncating LUT."""
    xd = x.double()
    lo = xd.amin((2, 3), keepdim=True)
    hi = xd.amax((2, 3), keepdim=True)
    scale = torch.full_like(hi, 255.0) / (hi - lo).clamp(min=1.0)  # not 255.0 / t: torch computes 1 / t * 255
    y = (xd * scale + (-lo * scale)).trunc().clamp(0.0, 255.0)
    return torch.where(hi > lo, y, xd).float()


def equalize(x: torch.Tensor, arg: torch.Tensor | None = None) -> torch.Tensor:
    """``ImageOps.equalize``: per channel, the histogram-equalizing LUT Pillow builds."""
    n, c = x.shape[:2]
    v = x.long().reshape(n * c, -1)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, v, torch.ones_like(v))
    nonzero = hist > 0
    last = 255 - nonzero.flip(1).long().argmax(1, keepdim=True)        # highest value present
    step = (hist.sum(1, keepdim=True) - hist.gather(1, last)) // 255
    before = hist.cumsum(1) - hist
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(max=255)
    keep = (nonzero.sum(1, keepdim=True) <= 1) | (step == 0)
    return torch.where(keep, v, lut.gather(1, v)).view_as(x).float()


def invert(x: torch.Tensor, arg: torch.Tensor | None = None) -> torch.Tensor:
    return 255.0 - x


def _per_sample(arg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return to_device(arg, x.device).view(-1, 1, 1, 1)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the ``bits`` high bits (timm returns the image unchanged for 8 bits or more)."""
    b = _per_sample(bits, x).long().clamp(0, 8)
    mask = (~((1 << (8 - b)) - 1)) & 0xFF
    return (x.long() & mask).float()


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.where(x < _per_sample(threshold, x).float(), x, 255.0 - x)


def solarize_add(x: torch.Tensor, add: torch.Tensor, threshold: float = 128.0) -> torch.Tensor:
    return torch.where(x < threshold, (x + _per_sample(add, x).float()).clamp(max=255.0), x)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # Pillow ImagingBlend: float32 in1 + alpha * (in2 - in1), truncated, clipped (two separate roundings, no FMA)
    f = _per_sample(factor, x).float()
    d = x - degenerate
    y = degenerate + f * d
    return y.clamp_(0.0, 255.0).trunc_()


def _gray(x: torch.Tensor) -> torch.Tensor:
    # Pillow RGB -> L: (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16; exact in float32 (< 2**24)
    s = x[:, 0] * 19595.0 + x[:, 1] * 38470.0 + x[:, 2] * 7471.0 + 32768.0
    return torch.floor(s / 65536.0)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color``: blend with the grayscale image."""
    return _blend(_gray(x)[:, None].expand_as(x), x, factor)


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast``: blend with the mean gray level, ``int(mean + 0.5)``."""
    total = _gray(x).double().sum((1, 2))  # exact; divided as Python divides (ImageStat)
    mean = torch.floor(total / torch.full_like(total, float(x.shape[2] * x.shape[3])) + 0.5).float()
    return _blend(mean.view(-1, 1, 1, 1).expand_as(x), x, factor)


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros_like(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Sharpness``: blend with ``ImageFilter.SMOOTH`` (3x3 kernel 1,1,1/1,5,1/1,1,1 over 13;
    Pillow leaves the one-pixel border unfiltered).

    The smoothing follows Pillow's ``ImagingFilter3x3`` term by term in float32 (row below, row, row above; each
    row left to right), with elementwise ops rather than a convolution, whose summation order and TF32 use
    vary by backend.
    """
    n, c, h, w = x.shape
    one = float(np.float32(1) / np.float32(13))   # Pillow divides the float32 kernel by the divisor
    five = float(np.float32(5) / np.float32(13))
    k1 = torch.tensor(one, dtype=torch.float32)
    k5 = torch.tensor(five, dtype=torch.float32)

    def row(r: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        return r[..., :-2] * k1 + r[..., 1:-1] * centre + r[..., 2:] * k1

    ss = row(x[:, :, 2:], k1) + row(x[:, :, 1:-1], k5) + row(x[:, :, :-2], k1)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = ss.add_(0.5).floor_().clamp_(0.0, 255.0)
    return _blend(degenerate, x, factor)


OP_FUNCTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "AutoContrast": autocontrast, "Equalize": equalize, "Invert": invert,
    "Posterize": posterize, "PosterizeIncreasing": posterize,
    "Solarize": solarize, "SolarizeIncreasing": solarize, "SolarizeAdd": solarize_add,
    "Color": color, "ColorIncreasing": color, "Contrast": contrast, "ContrastIncreasing": contrast,
    "Brightness": brightness, "BrightnessIncreasing": brightness,
    "Sharpness": sharpness, "SharpnessIncreasing": sharpness,
}


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` in float32, in place, in the order of ``ToNormalizedTensor`` (bit-identical)."""
    x.div_(255.0)
    x.sub_(mean.view(1, -1, 1, 1))
    x.div_(std.view(1, -1, 1, 1))
    return x


def keyed_normal(keys: torch.Tensor, count: int, salt: int, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(len(keys), count)`` standard normal values, row ``i`` a function of ``keys[i]`` and ``salt`` only
    (Box-Muller over two keyed uniforms, :mod:`pitvit.utils.keyed`): a sample's noise is the same whatever batch,
    process or device it lands in."""
    rows = hash_keys(keys.to(device), salt)  # 32 bits per sample
    out = torch.empty(len(keys), count, device=device, dtype=dtype)
    step = max(1, (1 << 22) // max(count, 1))  # bounded temporaries: 4M keys at a time
    cols = torch.arange(count, device=device, dtype=torch.int64)
    for i in range(0, len(keys), step):
        k = (rows[i:i + step, None] << 31) | cols[None]
        u1, u2 = uniform_from_keys(k, 0), uniform_from_keys(k, 1)
        out[i:i + step] = (torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)).to(dtype)
    return out


def erase(x: torch.Tensor, boxes: torch.Tensor, mode: str = "pixel",
          generator: torch.Generator | None = None, keys: torch.Tensor | None = None) -> torch.Tensor:
    """Fill boxes ``(n, k, 4)`` ``[top, left, h, w]`` (``h = 0``: none) of the normalized batch, in place:
    per-pixel normal noise (``pixel``), one normal colour per box and channel (``rand``) or zeros (``const``).
    The noise comes from each sample's ``keys`` entry (one int64 per sample) when given, else from
    ``generator``."""
    n, c, h, w = x.shape
    dev = x.device
    boxes = boxes.cpu()  # the selection is decided on the host: no device synchronization
    r = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    col = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    for k in range(boxes.shape[1]):
        b = boxes[:, k]
        sel = (b[:, 2] > 0).nonzero().squeeze(1)
        if len(sel) == 0:
            continue
        bd = to_device(b[sel], dev, torch.float32)
        t, l, bh, bw = (bd[:, i].view(-1, 1, 1) for i in range(4))
        m = ((r >= t) & (r < t + bh) & (col >= l) & (col < l + bw))[:, None]
        xs = x.index_select(0, to_device(sel, dev))
        if mode == "pixel":
            fill = (keyed_normal(keys[sel], c * h * w, k, dev, x.dtype).view(xs.shape) if keys is not None else
                    torch.randn(xs.shape, device=dev, dtype=x.dtype, generator=generator))
        elif mode == "rand":
            fill = (keyed_normal(keys[sel], c, k, dev, x.dtype) if keys is not None else
                    torch.randn(len(sel), c, device=dev, dtype=x.dtype, generator=generator))
            fill = fill.view(len(sel), c, 1, 1).expand_as(xs)
        else:
            fill = torch.zeros_like(xs)
        x.index_copy_(0, to_device(sel, dev), torch.where(m, fill, xs))
    return x
