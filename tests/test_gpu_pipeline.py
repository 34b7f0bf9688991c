"""Tests for pitvit.data.gpu on the CPU device: every pixel op against timm's/Pillow's own op on the same
parameters, the parameter draws against timm's (exactly, and as distributions), whole batches against the CPU
pipeline, and the loader contract (resume, ranks, workers, fallbacks, skipped files).

Real photos are the 20 ImageNet JPEGs of the ``imagenet_photos`` fixture (tests/conftest.py: PyPI's foolbox
wheel, fetched once); every op test also runs on synthetic images. Fidelity is measured in uint8 levels: mean
|diff| <= 0.05 and max <= 2; the worst measured values are printed at the end of the module with ``-s``.
"""
from __future__ import annotations

import io
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pitvit.data import CorruptImageError, DatasetError, SeededDataset, build_dataset, build_loader, build_transform
from pitvit.data.gpu import EncodedDataset, GpuStage, ParamLayout, jpeg_info, parse_rand_augment
from pitvit.data.gpu import ops
from pitvit.data.gpu.params import (GEOMETRIC_OPS, RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS, ParamDrawer,
                                    TrainSpec, affine_data, erase_params, level_to_arg, rrc_params)
from pitvit.data.gpu.pipeline import eval_geometry
from pitvit.utils.errors import ConfigError
from pitvit.utils.seed import mix_seed

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FILL = (124, 116, 104)  # timm's img_mean for ImageNet's mean: round(255 * m) per channel, by hand
RA = "rand-m9-mstd0.5-inc1"
FIDELITY: dict[str, tuple[float, float]] = {}  # name -> (mean, max) levels

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def fidelity_summary():
    """The worst fidelity each comparison measured (what docs/gpu_pipeline.md reports); shown with ``-s``."""
    yield
    for name, (m, mx) in sorted(FIDELITY.items()):
        print(f"  {name:48s} mean {m:.4f}  max {mx:.0f} levels")


# ---------------------------------------------------------------------------- images
def synthetic(h: int = 150, w: int = 200, seed: int = 0) -> Image.Image:
    """Natural-ish: smooth colour gradients, hard-edged shapes, a little texture."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([128 + 90 * np.sin(xx / 23 + yy / 41), 120 + 80 * np.cos(yy / 17 - xx / 53),
                    100 + 70 * np.sin((xx + yy) / 31)], -1)
    img[(xx - w * 0.3) ** 2 + (yy - h * 0.6) ** 2 < (min(h, w) * 0.2) ** 2] = (240, 30, 20)
    img[int(h * 0.1):int(h * 0.35), int(w * 0.55):int(w * 0.9)] = (15, 200, 60)
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def photos(files: list[Path], n: int = 4, size: tuple[int, int] = (200, 150)) -> list[Image.Image]:
    return [Image.open(f).convert("RGB").resize(size, Image.Resampling.BICUBIC) for f in files[:n]]


SOURCES = ["synthetic", "photos"]


@pytest.fixture
def images(request, source: str) -> list[Image.Image]:
    """The test's images: 4 of the real photos, or 2 synthetic ones (``source`` is the test's parameter)."""
    if source == "photos":
        return photos(request.getfixturevalue("imagenet_photos"))
    return [synthetic(150, 200, 0), synthetic(171, 128, 1)]


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()


def levels(a: torch.Tensor, b: torch.Tensor, name: str, *, mean_tol: float = 0.05, max_tol: float = 2.0) -> None:
    d = (a.double() - b.double()).abs()
    m, mx = d.mean().item(), d.max().item()
    prev = FIDELITY.get(name, (0.0, 0.0))
    FIDELITY[name] = (max(prev[0], m), max(prev[1], mx))
    assert m <= mean_tol and mx <= max_tol, f"{name}: mean |diff| {m:.4f}, max {mx:.1f} levels"


# ---------------------------------------------------------------------------- crop / resize
def crop_plan(h: int, w: int, size: int):
    one = lambda length: ops.AxisPlan([0.0], [float(length)], [float(size)], [0.0])  # noqa: E731
    return one(h), one(w)


@pytest.mark.parametrize("exact", [True, False], ids=["fixed-point", "float32"])
@pytest.mark.parametrize("source", SOURCES)
def test_random_resized_crop_and_flip_match_pil(source, images, exact):
    size = 112
    rng = random.Random(0)
    for k, img in enumerate(images):
        for trial in range(4):
            top, left, h, w = rrc_params(rng, img.height, img.width, (0.08, 1.0), (3 / 4, 4 / 3))
            if trial == 3:
                top, left, h, w = 3, 5, 20, 31  # strong upscaling
            flip = (k + trial) % 2 == 1
            ref = img.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BICUBIC)
            if flip:
                ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            view = to_tensor(img)[:, top:top + h, left:left + w]
            out = ops.resample([view], *crop_plan(h, w, size), (size, size), flip=[flip], exact=exact)
            levels(out[0], to_tensor(ref), f"crop+resize+flip, {'fixed-point' if exact else 'float32'} ({source})")


def test_pass_order_follows_pillow():
    """Pillow rounds to uint8 between its two passes, so their order matters; Pillow 13 changed it for resizes
    that shrink the height much more than the width. Random shapes, both orders, against the installed Pillow."""
    img = synthetic(260, 260, 4)
    rng = random.Random(3)
    for _ in range(25):
        h, w, oh, ow = rng.randint(20, 260), rng.randint(20, 260), rng.randint(16, 140), rng.randint(16, 140)
        ref = to_tensor(img.crop((0, 0, w, h)).resize((ow, oh), Image.Resampling.BICUBIC))
        plan = lambda length, total: ops.AxisPlan([0.0], [float(length)], [float(total)], [0.0])  # noqa: E731
        out = ops.resample([to_tensor(img)[:, :h, :w]], plan(h, oh), plan(w, ow), (oh, ow))
        levels(out[0], ref, "resize, random shapes (pass order)")
    assert ops.vertical_first(300, 200, 100, 150, pillow_major=13)
    assert not ops.vertical_first(300, 200, 100, 150, pillow_major=12)
    assert not ops.vertical_first(300, 200, 100, 90, pillow_major=13)


def test_resample_memory_bound_is_exact():
    """Tiny ``max_elements`` forces one group per image and the banded path: the result must not change."""
    imgs = [to_tensor(synthetic(150, 200, 0)), to_tensor(synthetic(90, 60, 1)), to_tensor(synthetic(171, 128, 2))]
    n = len(imgs)
    ys = ops.AxisPlan([0.0] * n, [float(i.shape[1]) for i in imgs], [64.0] * n, [0.0] * n)
    xs = ops.AxisPlan([0.0] * n, [float(i.shape[2]) for i in imgs], [48.0] * n, [0.0] * n)
    a = ops.resample(imgs, ys, xs, (64, 48), flip=[False, True, False])
    b = ops.resample(imgs, ys, xs, (64, 48), flip=[False, True, False], max_elements=3 * 90 * 60)
    c = ops.resample(imgs, ys, xs, (64, 48), flip=[False, True, False], max_elements=3 * 200 * 7)
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("crop_pct", [0.875, 0.9])
def test_eval_resize_center_crop_matches_cpu_transform(source, images, crop_pct):
    size = 96
    tf = build_transform(False, input_size=size, mean=MEAN, std=STD, crop_pct=crop_pct)
    imgs = images + [synthetic(97, 131, 3)]
    resize = int(size / crop_pct)
    for img in imgs:
        (ylo, yhi, yt, yo), (xlo, xhi, xt, xo) = eval_geometry(img.height, img.width, resize, (size, size))
        x = to_tensor(img)[:, ylo:yhi, xlo:xhi]
        out = ops.resample([x], ops.AxisPlan([ylo], [img.height], [yt], [yo]),
                           ops.AxisPlan([xlo], [img.width], [xt], [xo]), (size, size))
        ref = tf(img) * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
        levels(out[0], ref * 255, f"eval resize+center crop vs CPU transform ({source})", max_tol=2.001)


# ---------------------------------------------------------------------------- RandAugment ops
def _timm_op(name: str, img: Image.Image, arg) -> Image.Image:
    from timm.data import auto_augment as aa

    args = () if arg is None else (arg,)
    if name.startswith("Posterize") and arg == 0:
        # Pillow >= 13 rejects 0 bits (timm's CPU RandAugment then raises, see docs/gpu_pipeline.md); every
        # earlier Pillow masks all bits away: a black image, which the GPU op reproduces
        return Image.new(img.mode, img.size)
    return aa.NAME_TO_OP[name](img, *args, fillcolor=FILL, resample=Image.Resampling.BICUBIC)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("name", sorted(set(RAND_INCREASING_TRANSFORMS) | set(RAND_TRANSFORMS)))
def test_rand_augment_op_matches_timm(source, images, name):
    size = 64
    rng = random.Random(sum(map(ord, name)))  # hash() of a str changes from run to run
    base = [im.resize((size, size), Image.Resampling.BICUBIC) for im in images]
    for k, img in enumerate(base):
        for mag in (9.0, rng.uniform(5.0, 10.0), 0.5):
            arg = level_to_arg(name, mag, rng)
            ref = to_tensor(_timm_op(name, img, arg))
            x = to_tensor(img)[None]
            if name in GEOMETRIC_OPS:
                out = ops.affine(x, torch.tensor([affine_data(name, arg, size, size)], dtype=torch.float64), FILL)
            else:
                out = ops.OP_FUNCTIONS[name](x, torch.tensor([0.0 if arg is None else float(arg)]))
            levels(out[0], ref, f"RandAugment {name}")


def test_equalize_autocontrast_edge_cases():
    flat = Image.new("RGB", (16, 16), (7, 100, 250))
    two = Image.fromarray(np.where(np.arange(256).reshape(16, 16, 1) % 3 == 0, 10, 200).astype(np.uint8)
                          .repeat(3, -1))
    for img in (flat, two):
        for name in ("Equalize", "AutoContrast"):
            out = ops.OP_FUNCTIONS[name](to_tensor(img)[None], torch.zeros(1))
            assert torch.equal(out[0], to_tensor(_timm_op(name, img, None))), name


def test_normalize_is_bit_identical_to_the_cpu_pipeline():
    from pitvit.data.transforms import ToNormalizedTensor

    img = synthetic(40, 50)
    ref = ToNormalizedTensor(MEAN, STD)(img)
    out = ops.normalize(to_tensor(img)[None], torch.tensor(MEAN), torch.tensor(STD))[0]
    assert torch.equal(out, ref)


def test_erase_boxes_match_timm_random_erasing():
    from timm.data.random_erasing import RandomErasing

    spec = TrainSpec(size=(40, 56), re_prob=0.6, re_mode="const", re_count=2)
    re = RandomErasing(0.6, mode="const", max_count=2, device="cpu")
    for s in range(60):
        random.seed(s)
        ref = torch.ones(3, 40, 56)
        re(ref)
        boxes = torch.from_numpy(erase_params(random.Random(s), spec)).view(1, 2, 4)
        out = ops.erase(torch.ones(1, 3, 40, 56), boxes, "const")[0]
        assert torch.equal(out, ref), s


# ---------------------------------------------------------------------------- parameters
def test_parse_rand_augment():
    s = parse_rand_augment(RA)
    assert (s.magnitude, s.num_layers, s.prob, s.mstd, s.mmax) == (9.0, 2, 0.5, 0.5, None)
    assert s.ops == RAND_INCREASING_TRANSFORMS
    from timm.data.auto_augment import _RAND_INCREASING_TRANSFORMS, _RAND_TRANSFORMS
    assert list(RAND_INCREASING_TRANSFORMS) == list(_RAND_INCREASING_TRANSFORMS)
    assert list(RAND_TRANSFORMS) == list(_RAND_TRANSFORMS)
    s = parse_rand_augment("rand-m7-n3-p0.7-mstd101-mmax12")
    assert (s.magnitude, s.num_layers, s.prob, s.mstd, s.mmax, s.ops) == (7, 3, 0.7, math.inf, 12, RAND_TRANSFORMS)
    with pytest.raises(ValueError, match="pipeline=cpu"):
        parse_rand_augment("original")


def test_parameter_layout_columns():
    """The documented layout, written out by hand for 2 RandAugment layers and 2 erasing boxes."""
    cols = ParamLayout(num_layers=2, boxes=2)
    assert (cols.CROP, cols.FLIP) == (slice(0, 4), 4)
    assert [(cols.op(k), cols.arg(k), cols.affine(k)) for k in (0, 1)] == [(5, 6, slice(7, 13)),
                                                                          (13, 14, slice(15, 21))]
    assert (cols.erase, cols.width) == (slice(21, 29), 29)
    assert (ParamLayout().erase, ParamLayout().width) == (slice(5, 5), 5)
    spec = TrainSpec(size=(32, 32), rand_augment=parse_rand_augment(RA), re_prob=0.5, re_count=2)
    assert spec.layout == cols and ParamDrawer(spec)(1, 40, 50).shape == (29,)


def test_crop_parameters_equal_timm_for_the_same_seed():
    from timm.data.transforms import RandomResizedCropAndInterpolation

    get = RandomResizedCropAndInterpolation.get_params
    for s, (h, w) in enumerate([(375, 500), (500, 333), (64, 900), (900, 40), (224, 224)] * 40):
        random.seed(s)
        ref = get(Image.new("RGB", (w, h)), (0.08, 1.0), (3 / 4, 4 / 3))
        assert rrc_params(random.Random(s), h, w, (0.08, 1.0), (3 / 4, 4 / 3)) == tuple(ref)


def _timm_ra_draws(n: int, seed: int) -> list[list[tuple[str, object]]]:
    """What timm's own RandAugment draws, recorded per sample: [(op name, argument or None)] per applied op."""
    from timm.data.auto_augment import rand_augment_transform

    ra = rand_augment_transform(RA, dict(translate_const=100, img_mean=FILL))
    calls: list = []
    for op in ra.ops:
        op.aug_fn = (lambda name: lambda img, *a, **k: calls.append((name, a[0] if a else None)) or img)(op.name)
    tiny = Image.new("RGB", (4, 4))
    random.seed(seed)
    np.random.seed(seed)
    out = []
    for _ in range(n):
        calls.clear()
        ra(tiny)
        out.append(list(calls))
    return out


def test_rand_augment_draws_equal_timm_for_the_same_seed():
    """Seeded like SeededDataset seeds the CPU pipeline, our drawer yields timm's ops and arguments."""
    from timm.data.auto_augment import rand_augment_transform

    ra = rand_augment_transform(RA, dict(translate_const=100, img_mean=FILL))
    calls: list = []
    for op in ra.ops:
        op.aug_fn = (lambda name: lambda img, *a, **k: calls.append((name, a[0] if a else None)) or img)(op.name)
    spec = TrainSpec(size=(64, 64), hflip=0.0, rand_augment=parse_rand_augment(RA))
    drawer, cols = ParamDrawer(spec), spec.layout
    for i in range(200):
        s = mix_seed(5, 0, i, 0)
        p = drawer(s, 64, 64)
        mine = [(RAND_INCREASING_TRANSFORMS[int(p[cols.op(k)])], p[cols.arg(k)]) for k in range(2)
                if p[cols.op(k)] >= 0]
        # timm, seeded as SeededDataset seeds it, after the crop's draws (made by timm's own get_params)
        random.seed(s)
        np.random.seed(s & 0xFFFFFFFF)
        from timm.data.transforms import RandomResizedCropAndInterpolation
        RandomResizedCropAndInterpolation.get_params(Image.new("RGB", (64, 64)), (0.08, 1.0), (3 / 4, 4 / 3))
        calls.clear()
        ra(Image.new("RGB", (4, 4)))
        assert [(n, None if a is None else pytest.approx(float(a))) for n, a in calls] == \
            [(n, None if n in ("AutoContrast", "Equalize", "Invert") else pytest.approx(a)) for n, a in mine], i


def _ks(a, b) -> float:
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def _ks_limit(n: int, m: int, c: float = 1.95) -> float:  # alpha = 0.001
    return c * math.sqrt((n + m) / (n * m))


def test_parameter_distributions_match_timm():
    """Independent streams (ours seeded per sample, timm's from one global seed): crop area and aspect, flip rate,
    op frequencies and magnitudes, erasing rate, area and aspect agree (KS and chi-square, alpha about 0.001)."""
    from timm.data.random_erasing import RandomErasing
    from timm.data.transforms import RandomResizedCropAndInterpolation

    n, (H, W) = 3000, (375, 500)
    spec = TrainSpec(size=(224, 224), rand_augment=parse_rand_augment(RA), re_prob=0.25)
    drawer = ParamDrawer(spec)
    ours = np.stack([drawer(mix_seed(1, 2, i, 0), H, W) for i in range(n)])
    cols = spec.layout
    mine = ours[:, cols.CROP]  # top, left, h, w
    random.seed(123)
    crops = np.array([RandomResizedCropAndInterpolation.get_params(Image.new("RGB", (W, H)), (0.08, 1), (3 / 4, 4 / 3))
                      for _ in range(n)], float)
    for name, a, b in [("crop area", mine[:, 2] * mine[:, 3], crops[:, 2] * crops[:, 3]),
                       ("crop aspect", np.log(mine[:, 3] / mine[:, 2]), np.log(crops[:, 3] / crops[:, 2])),
                       ("crop top", mine[:, 0] / (H - mine[:, 2] + 1), crops[:, 0] / (H - crops[:, 2] + 1))]:
        assert _ks(a, b) < _ks_limit(n, n), name
    assert abs(ours[:, cols.FLIP].mean() - 0.5) < 3.3 * math.sqrt(0.25 / n)
    # RandAugment: op frequencies (chi-square, 15 ops + "not applied") and per-op argument distributions
    timm_draws = _timm_ra_draws(n, 7)
    ours_ops = [(RAND_INCREASING_TRANSFORMS[int(r[cols.op(k)])], r[cols.arg(k)]) for r in ours for k in range(2)
                if r[cols.op(k)] >= 0]
    timm_ops = [c for s in timm_draws for c in s]
    names = list(RAND_INCREASING_TRANSFORMS)
    cnt_o = np.array([sum(o == nm for o, _ in ours_ops) for nm in names] + [2 * n - len(ours_ops)], float)
    cnt_t = np.array([sum(o == nm for o, _ in timm_ops) for nm in names] + [2 * n - len(timm_ops)], float)
    chi2 = (((cnt_o - cnt_t) ** 2) / (cnt_o + cnt_t)).sum()
    assert chi2 < 37.7, chi2  # chi-square, 15 dof, p = 0.001
    for nm in ("Rotate", "SolarizeIncreasing", "ColorIncreasing", "TranslateXRel", "PosterizeIncreasing"):
        a = [v for o, v in ours_ops if o == nm]
        b = [float(v) for o, v in timm_ops if o == nm]
        assert _ks(a, b) < _ks_limit(len(a), len(b)), nm
    # erasing: rate, area, aspect
    boxes = ours[:, cols.erase]
    eh, ew = boxes[:, 2], boxes[:, 3]
    re = RandomErasing(0.25, mode="const", device="cpu")
    random.seed(99)
    ref = []
    for _ in range(n):
        x = torch.ones(1, 224, 224)
        re(x)
        z = (x[0] == 0)
        ref.append((int(z.any(1).sum()), int(z.any(0).sum())) if z.any() else (0, 0))
    ref = np.array(ref, float)
    got, exp = (eh > 0).mean(), (ref[:, 0] > 0).mean()
    assert abs(got - exp) < 3.3 * math.sqrt(2 * 0.25 * 0.75 / n), (got, exp)
    a, b = eh[eh > 0] * ew[eh > 0], ref[ref[:, 0] > 0, 0] * ref[ref[:, 0] > 0, 1]
    assert _ks(a, b) < _ks_limit(len(a), len(b)), "erase area"
    a, b = np.log(eh[eh > 0] / ew[eh > 0]), np.log(ref[ref[:, 0] > 0, 0] / ref[ref[:, 0] > 0, 1])
    assert _ks(a, b) < _ks_limit(len(a), len(b)), "erase aspect"


# ---------------------------------------------------------------------------- files and folders
def _save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def make_folder(root: Path, n: int = 8, photo_files: list[Path] | None = None, scale: float = 0.4) -> Path:
    """``root/train/c{0,1}/*.jpg``: baseline JPEGs of ImageNet-like shapes (500 x 375 and the like, times
    ``scale``), made from ``photo_files`` or from synthetic images."""
    if photo_files:
        base = photos(photo_files, n, (512, 512))
    else:
        base = [synthetic(375, 500, k) for k in range(n)]
    shapes = [(round(w * scale), round(h * scale)) for w, h in [(500, 375), (375, 500), (450, 300), (300, 450)]]
    for k, img in enumerate(base):
        _save(img.resize(shapes[k % 4], Image.Resampling.BICUBIC), root / "train" / f"c{k % 2}" / f"{k:02d}.jpg",
              quality=90)
    return root


COMMON = dict(input_size=64, mean=MEAN, std=STD, interpolation="bicubic", crop_pct=0.875)


def cpu_batches(root, *, train, aug=None, batch_size=4, seed=3, **kw):
    ds = build_dataset(root, "train", transform=build_transform(train, **COMMON, aug=aug))
    return list(build_loader(ds, batch_size=batch_size, train=train, seed=seed, num_workers=0, **kw))


LOADER_ARGS = ("num_workers", "rank", "world_size", "repeated_aug")


def gpu_loader(root, *, train, aug=None, batch_size=4, seed=3, device="cpu", **kw):
    """``build_loader`` with the GPU stage on ``device``; ``kw`` goes to the loader or the stage."""
    loader_kw = {k: kw.pop(k) for k in LOADER_ARGS if k in kw}
    loader_kw.setdefault("num_workers", 0)
    stage = GpuStage(device, aug=aug, **{**COMMON, **kw})
    return build_loader(build_dataset(root, "train"), batch_size=batch_size, train=train, seed=seed, stage=stage,
                        **loader_kw)


def compare_batches(cpu, gpu, name):
    """Whole pipelines, sample by sample. A one-level rounding difference just before a thresholding op
    (Posterize, Solarize, and Equalize after them) can flip a pixel across the threshold, so a sample may hold a
    few values far off; a wrong parameter (crop, flip, op, magnitude, box) would put most of them off."""
    assert len(cpu) == len(gpu)
    s = torch.tensor(STD).view(3, 1, 1) * 255
    for (a, la), (b, lb) in zip(cpu, gpu):
        assert torch.equal(la, lb)
        for x, y in zip(a, b):
            d = ((x - y) * s).abs()
            far = (d > 2.001).double().mean().item()
            key = name + " (share of values > 2 levels off)"
            FIDELITY[key] = (max(FIDELITY.get(key, (0.0, 0.0))[0], far), 0.0)
            assert far <= 0.02, f"{name}: {far:.2%} of a sample's values differ by more than 2 levels"
            if far == 0:
                levels(x * s, y * s, name, max_tol=2.001)


@pytest.mark.parametrize("source", SOURCES)
def test_training_batches_equal_the_cpu_pipeline(tmp_path, request, source):
    """Same seed, same sample keys: the same crops, flips, RandAugment ops and erasing boxes (constant fill, so
    that the noise does not differ) as the CPU pipeline, over two epochs."""
    files = request.getfixturevalue("imagenet_photos") if source == "photos" else None
    root = make_folder(tmp_path, 8, files)
    aug = {"preset": "official", "re_mode": "const", "re_prob": 0.5}
    gl = gpu_loader(root, train=True, aug=aug)
    for epoch in (0, 1):
        cpu_ds = build_dataset(root, "train", transform=build_transform(True, **COMMON, aug=aug))
        cl = build_loader(cpu_ds, batch_size=4, train=True, seed=3, num_workers=0)
        cl.set_epoch(epoch)
        gl.set_epoch(epoch)
        compare_batches(list(cl), list(gl), f"training batch vs CPU pipeline ({source})")


def test_evaluation_batches_equal_the_cpu_pipeline(tmp_path):
    root = make_folder(tmp_path, 6)
    gl = gpu_loader(root, train=False, batch_size=4)
    compare_batches(cpu_batches(root, train=False), list(gl), "evaluation batch vs CPU pipeline")
    assert [len(b[1]) for b in gl] == [4, 2]


def test_a_subset_reads_its_own_samples(tmp_path):
    """``data.holdout`` gives the loaders a Subset: the GPU stage must read the subset's images, not the first ones
    of the whole split. Reference: the CPU pipeline over the same Subset (which indexes through it)."""
    from pitvit.data.datasets import Subset

    root = make_folder(tmp_path, 8)
    pick = [5, 2, 7]
    cpu_ds = Subset(build_dataset(root, "train", transform=build_transform(False, **COMMON)), pick)
    cpu = list(build_loader(cpu_ds, batch_size=4, train=False, seed=3, num_workers=0))
    stage = GpuStage("cpu", **COMMON)
    gpu = list(build_loader(Subset(build_dataset(root, "train"), pick), batch_size=4, train=False, seed=3,
                            stage=stage, num_workers=0))
    compare_batches(cpu, gpu, "evaluation batch of a Subset vs CPU pipeline")
    full = build_dataset(root, "train")
    assert Subset(full, pick).samples == [full.samples[i] for i in pick]


# ---------------------------------------------------------------------------- the loader contract
def test_loader_contract_resume_and_prefetch(tmp_path):
    root = make_folder(tmp_path, 8)
    gl = gpu_loader(root, train=True, batch_size=2)
    assert len(gl) == gl.steps_per_epoch == 4 and gl.batch_size == 2
    gl.set_epoch(1)
    full = list(gl)
    x, y = full[0]
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.device.type == "cpu"
    again = list(gl)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again))  # pixel-mode noise seeded per step
    gl.set_epoch(1, start_step=2)
    assert len(gl) == 2
    resumed = list(gl)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[2:], resumed))
    assert len(gl) == 4  # the start step applies once
    sync = gpu_loader(root, train=True, batch_size=2, prefetch=0)
    sync.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, sync))
    gl.set_epoch(2)
    assert not torch.equal(next(iter(gl))[0], full[0][0])
    assert gl.sampler.state_dict()["epoch"] == 2


def test_repeated_augmentation_draws_each_repeat_anew(tmp_path):
    root = make_folder(tmp_path, 6)
    gl = gpu_loader(root, train=True, batch_size=3, repeated_aug=True)
    x, y = next(iter(gl))
    assert y[0] == y[1] == y[2]  # the same image three times in a row (DeiT's RASampler)...
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])  # ...augmented three ways


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_matches_the_cpu_device(tmp_path):
    """The device code on CUDA against the same code on the CPU, fed identical pixels (PNG files, decoded by
    PIL in the workers, so nvjpeg's decoding differences stay out): the same crops, ops and normalization."""
    root = tmp_path / "png"
    for k in range(8):
        _save(synthetic(150 + 10 * k, 200 - 10 * k, k), root / "train" / f"c{k % 2}" / f"{k}.png")
    aug = {"preset": "official", "re_mode": "const"}
    for train in (True, False):
        cpu = list(gpu_loader(root, train=train, aug=aug, device="cpu"))
        cuda = list(gpu_loader(root, train=train, aug=aug, device="cuda"))
        name = f"CUDA vs CPU device ({'train' if train else 'eval'})"
        compare_batches(cpu, [(x.cpu(), y.cpu()) for x, y in cuda], name)


@pytest.mark.parametrize("re_mode", ["pixel", "rand"])
def test_two_ranks_concatenate_to_one_process(tmp_path, re_mode):
    """Random erasing on every image, its noise included: the noise is keyed per sample (seed, epoch, index,
    repeat), so two ranks of 2 produce exactly one process's batch of 4."""
    root = make_folder(tmp_path, 8)
    aug = {"preset": "official", "re_prob": 1.0, "re_mode": re_mode}
    one = list(gpu_loader(root, train=True, batch_size=4, aug=aug))
    noisy = list(gpu_loader(root, train=True, batch_size=4, aug={**aug, "re_mode": "const"}))
    assert not torch.equal(one[0][0], noisy[0][0])  # the noise is there
    r0 = list(gpu_loader(root, train=True, batch_size=2, aug=aug, rank=0, world_size=2))
    r1 = list(gpu_loader(root, train=True, batch_size=2, aug=aug, rank=1, world_size=2))
    for (a, la), (b, lb), (c, lc) in zip(one, r0, r1):
        assert torch.equal(a, torch.cat([b, c])) and torch.equal(la, torch.cat([lb, lc]))


def test_worker_processes_do_not_change_batches(tmp_path):
    root = make_folder(tmp_path, 8)
    a = list(gpu_loader(root, train=True, batch_size=4))
    b = list(gpu_loader(root, train=True, batch_size=4, num_workers=2))
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_a_batch_crosses_processes_in_few_tensors(tmp_path):
    """The files' bytes travel from a worker packed in one tensor (one shared-memory descriptor per batch, not
    one per file) and come back as views equal to the files."""
    import pickle

    from pitvit.data.gpu.source import EncodedDataset, collate_encoded

    root = make_folder(tmp_path, 4)
    _save(synthetic(40, 50), root / "train" / "c0" / "zz.png")
    ds = build_dataset(root, "train")
    enc = EncodedDataset(ds.samples, ds.classes, 0, None)
    batch = collate_encoded([enc[(i, 0, 0)] for i in range(len(ds))])
    back = pickle.loads(pickle.dumps(batch))
    assert back.kinds == batch.kinds and back.kinds.count("png") == 1
    for a, b, k in zip(batch.data, back.data, back.kinds):
        assert torch.equal(a, b)
    storages = {b.untyped_storage().data_ptr() for b, k in zip(back.data, back.kinds) if k == "device"}
    assert len(storages) == 1


def test_breaking_out_of_an_epoch_stops_the_thread(tmp_path):
    import threading

    root = make_folder(tmp_path, 8)
    gl = gpu_loader(root, train=True, batch_size=2)
    for i, _ in enumerate(gl):
        if i == 0:
            break
    assert not any(t.name == "pitvit-gpu-pipeline" and t.is_alive() for t in threading.enumerate())
    assert len(list(gl)) == 4


def test_jpeg_info_sorts_files():
    img = synthetic(30, 40)
    def enc(**kw):
        buf = io.BytesIO()
        (kw.pop("im", img)).save(buf, **kw)
        return buf.getvalue()
    assert jpeg_info(enc(format="JPEG", quality=90)) == ("device", 30, 40)
    assert jpeg_info(enc(format="JPEG", im=img.convert("L"))) == ("device", 30, 40)
    assert jpeg_info(enc(format="JPEG", progressive=True))[0] == "progressive"
    assert jpeg_info(enc(format="JPEG", im=img.convert("CMYK")))[0] == "cmyk"
    assert jpeg_info(enc(format="PNG"))[0] == "png"
    assert jpeg_info(enc(format="BMP"))[0] == "other"
    assert jpeg_info(b"\xff\xd8\xff")[0] == "jpeg"


def test_fallback_files_are_decoded_counted_and_equal_the_cpu_pipeline(tmp_path):
    root = make_folder(tmp_path, 3)
    base = synthetic(120, 160, 9)
    _save(base, root / "train" / "c0" / "p.jpg", quality=90, progressive=True)
    _save(base.convert("CMYK"), root / "train" / "c0" / "q.jpg", quality=90)
    _save(base, root / "train" / "c1" / "r.png")
    _save(Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257), root / "train" / "c1" / "t.png")
    _save(base.convert("L"), root / "train" / "c1" / "s.jpg", quality=90)  # gray baseline: on the device
    for train in (True, False):
        gl = gpu_loader(root, train=train, batch_size=4)
        got = list(gl)
        assert dict(gl.fallback) == {"progressive": 1, "cmyk": 1, "png": 2} and gl.skipped == 0
        compare_batches(cpu_batches(root, train=train, aug={"preset": "official", "re_prob": 0.0} if train else None,
                                    batch_size=4),
                        got if not train else list(gpu_loader(root, train=True, batch_size=4,
                                                              aug={"preset": "official", "re_prob": 0.0})),
                        "fallback files vs CPU pipeline")
    with pytest.raises(DatasetError, match="fallback is disabled"):
        list(gpu_loader(root, train=False, batch_size=4, allow_fallback=False))


def test_unreadable_files_are_skipped_counted_or_fatal(tmp_path):
    root = make_folder(tmp_path, 6)
    (root / "train" / "c0" / "zz_bad.jpg").write_bytes(b"not an image at all")
    good = (root / "train" / "c1" / "01.jpg").read_bytes()
    (root / "train" / "c1" / "zz_trunc.jpg").write_bytes(good[: len(good) // 2])  # header fine, data cut
    gl = gpu_loader(root, train=False, batch_size=4)
    n = sum(len(y) for _, y in gl)
    assert n == 6 and gl.skipped == 2 and gl.skipped_total == 2
    assert sorted(Path(s.path).name for s in gl.skipped_files) == ["zz_bad.jpg", "zz_trunc.jpg"]
    list(gl)
    assert gl.skipped == 2 and gl.skipped_total == 4
    for workers in (0, 2):  # from a worker process too, the one-line error of the main process
        with pytest.raises(CorruptImageError) as e:
            list(gpu_loader(root, train=False, batch_size=4, strict_images=True, num_workers=workers))
        assert "\n" not in str(e.value) and str(e.value).startswith("cannot read image ")


def test_an_all_unreadable_batch_is_fatal_only_with_several_training_processes(tmp_path):
    root = tmp_path / "bad"
    for k in range(4):
        (root / "train" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        (root / "train" / f"c{k % 2}" / f"{k}.jpg").write_bytes(b"\xff\xd8garbage")
    assert list(gpu_loader(root, train=True, batch_size=2)) == []
    with pytest.raises(DatasetError, match="unreadable"):
        list(gpu_loader(root, train=True, batch_size=1, rank=0, world_size=2))


def test_unsupported_settings_name_the_cpu_pipeline(tmp_path):
    root = make_folder(tmp_path, 4)
    for aug in ({"preset": "paddle"}, {"preset": "small"}):
        with pytest.raises(ConfigError, match="pipeline=cpu"):
            gpu_loader(root, train=True, aug=aug)
    with pytest.raises(ConfigError, match="pipeline=cpu"):
        gpu_loader(root, train=True, interpolation="nearest")
    with pytest.raises(DatasetError, match="image files"):
        build_loader([(torch.zeros(1), 0)], batch_size=1, train=True, seed=0, stage=GpuStage("cpu"))


def test_training_config_selects_the_pipeline(tmp_path):
    """``data.pipeline: gpu`` is the only change a recipe needs; the CPU pipeline stays the default."""
    import shutil

    from pitvit.train.recipes import load_config
    from pitvit.utils.distributed import DistInfo
    from pitvit.train.builders import build_data

    root = make_folder(tmp_path, 4)
    shutil.copytree(root / "train", root / "val")
    base = [f"data.path={root}", "data.batch_size=2", "data.num_workers=0", "data.input_size=64"]
    cpu = build_data(load_config(None, base), DistInfo())
    gpu = build_data(load_config(None, base + ["data.pipeline=gpu"]), DistInfo())
    assert isinstance(cpu.train.stage.dataset, SeededDataset) and isinstance(gpu.train.stage.dataset, EncodedDataset)
    assert isinstance(gpu.val.stage.dataset, EncodedDataset) and gpu.val.stage.device == torch.device("cpu")
    assert gpu.train.steps_per_epoch == cpu.train.steps_per_epoch and gpu.classes == cpu.classes
    compare_batches(list(cpu.val), list(gpu.val), "evaluation batch via build_data")
    with pytest.raises(ValueError, match="data.pipeline"):
        load_config(None, base + ["data.pipeline=tpu"])


@pytest.mark.slow
def test_full_size_training_and_evaluation_batches_equal_the_cpu_pipeline(tmp_path, imagenet_photos):
    """The recipe at 224 px on the 20 photos at ImageNet sizes, two epochs (fidelity printed with -s)."""
    root = make_folder(tmp_path, 20, imagenet_photos, scale=1.0)
    common = dict(COMMON, input_size=224)
    aug = {"preset": "official", "re_mode": "const"}
    stage = GpuStage("cpu", aug=aug, **common)
    for epoch in (0, 1):
        ds = build_dataset(root, "train", transform=build_transform(True, **common, aug=aug))
        cl = build_loader(ds, batch_size=10, train=True, seed=0, num_workers=0)
        gl = build_loader(build_dataset(root, "train"), batch_size=10, train=True, seed=0, num_workers=0,
                          stage=stage)
        cl.set_epoch(epoch)
        gl.set_epoch(epoch)
        compare_batches(list(cl), list(gl), "224 px training batch vs CPU pipeline (photos)")
    ds = build_dataset(root, "train", transform=build_transform(False, **common))
    gl = build_loader(build_dataset(root, "train"), batch_size=10, train=False, seed=0, num_workers=0, stage=stage)
    compare_batches(list(build_loader(ds, batch_size=10, train=False, seed=0, num_workers=0)), list(gl),
                    "224 px evaluation batch vs CPU pipeline (photos)")


DDP_SCRIPT = r"""
import sys
import torch
torch.set_num_threads(1)
from pitvit.train import load_config
from pitvit.train.runner import fit
fit(load_config(None, sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_gloo_processes_with_the_gpu_pipeline_match_one(tmp_path):
    """DDP unchanged: each rank decodes and augments its own shard on its own device (here the CPU); with the
    per-step erasing noise and mixing off, two processes of batch 4 train the weights one process of 8 does."""
    import os
    import shutil
    import subprocess
    import sys

    root = make_folder(tmp_path / "data", 16)
    shutil.copytree(root / "train", root / "val")
    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    args = [f"data.path={root}", "data.pipeline=gpu", "data.num_workers=0", "data.input_size=32",
            "model.name=pit_test", "model.drop_path=0", "aug.mixup=0", "aug.cutmix=0", "aug.re_prob=0",
            "ema.enabled=false", "train.device=cpu", "train.amp=none", "train.epochs=1", "optim.eps=1e-3",
            "optim.lr_base_batch=0", "sched.warmup_epochs=0", "log.plot=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(script), *args, "data.batch_size=8", f"train.output={tmp_path / 'one'}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), *args, "data.batch_size=4", f"train.output={tmp_path / 'two'}"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["state_dict"]
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, rtol=1e-4, atol=1e-5)

