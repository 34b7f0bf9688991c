"""Tests for pitvit.data: datasets, errors, transforms, seeding, sharding, resume, mixup. Fast, CPU only."""
from __future__ import annotations

import gzip
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pitvit.data import (
    FASHION_MNIST_CLASSES, CorruptImageError, DatasetError, EpochBatchSampler, build_dataset, build_loader,
    build_mixup, build_transform, read_idx, resolve_aug,
)
from pitvit.data.loader import SeededDataset

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN3, STD3 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------- helpers
def write_idx(path: Path, array: np.ndarray, code: int = 0x08, gz: bool = True) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fmnist(folder: Path, n_train: int = 12, n_test: int = 6) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))


def save_image(path: Path, seed: int, size: tuple[int, int] = (20, 16), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)


def make_folder(root: Path, classes=("cat", "dog"), per_class: int = 3, split: str = "train") -> None:
    for ci, c in enumerate(classes):
        for j in range(per_class):
            ext = ".png" if j % 2 == 0 else ".JPEG"
            save_image(root / split / c / f"{c}_{j}{ext}", seed=ci * 100 + j)


def make_list(root: Path, n: int = 6, labels=(0, 1, 2)) -> None:
    lines = []
    for i in range(n):
        rel = f"images/img_{i}.png"
        save_image(root / rel, seed=i)
        lines.append(f"{rel} {labels[i % len(labels)]}")
    (root / "train_list.txt").write_text("\n".join(lines) + "\n")
    (root / "val_list.txt").write_text("\n".join(lines[:2]) + "\n")


class ToyDataset:
    """Random 'images' as tensors; the transform adds torch, random and numpy noise."""

    def __init__(self, n: int = 24, transform=None) -> None:
        self.n = n
        self.transform = transform
        self.classes = [str(i) for i in range(4)]
        self.targets = [i % 4 for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        x = torch.full((2,), float(i))
        x = x + torch.rand(2) + random.random() + float(np.random.rand())
        return x, self.targets[i]


# ---------------------------------------------------------------------------- IDX / Fashion-MNIST
def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)
    b = np.array([[-1, 7], [300, -40000]], dtype=np.int32)
    write_idx(tmp_path / "b", b, code=0x0C, gz=False)
    out = read_idx(tmp_path / "b")
    assert out.dtype.byteorder in ("=", "|") and out.shape == (2, 2)
    np.testing.assert_array_equal(out, b)


@pytest.mark.parametrize("damage", ["truncated", "magic", "gzip"])
def test_read_idx_corrupt(tmp_path, damage):
    a = np.zeros((3, 28, 28), dtype=np.uint8)
    p = tmp_path / "x-idx3-ubyte.gz"
    write_idx(p, a)
    if damage == "truncated":
        raw = gzip.decompress(p.read_bytes())[:-5]
        p.write_bytes(gzip.compress(raw))
    elif damage == "magic":
        raw = bytearray(gzip.decompress(p.read_bytes()))
        raw[0] = 7
        p.write_bytes(gzip.compress(bytes(raw)))
    else:
        p.write_bytes(p.read_bytes()[:30])
    with pytest.raises(DatasetError, match="corrupt IDX"):
        read_idx(p)


@pytest.mark.skipif(not (DEBIAN_FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_files():
    images = read_idx(DEBIAN_FMNIST / "train-images-idx3-ubyte.gz")
    labels = read_idx(DEBIAN_FMNIST / "train-labels-idx1-ubyte.gz")
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.min() == 0 and labels.max() == 9
    val = build_dataset(None, "val")
    assert len(val) == 10000 and val.classes == FASHION_MNIST_CLASSES
    img, label = val[0]
    assert img.mode == "L" and img.size == (28, 28) and 0 <= label <= 9


def test_fashion_mnist_tiny(tmp_path):
    write_fmnist(tmp_path)
    tf = build_transform(False, input_size=(1, 28, 28), mean=(0.5,), std=(0.5,), crop_pct=1.0)
    ds = build_dataset(tmp_path, "train", transform=tf)  # auto-detected
    assert type(ds).__name__ == "FashionMNIST" and len(ds) == 12 and len(ds.classes) == 10
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and y == 3
    assert len(build_dataset(tmp_path, "test", kind="fashion_mnist")) == 6


def test_fashion_mnist_missing(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        build_dataset(tmp_path, "train", kind="fashion_mnist")


# ---------------------------------------------------------------------------- folders and lists
def test_imagefolder(tmp_path):
    make_folder(tmp_path, per_class=3)
    make_folder(tmp_path, classes=("dog",), per_class=1, split="val")
    ds = build_dataset(tmp_path, "train")
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 0, 0, 1, 1, 1]
    img, label = ds[4]
    assert img.mode == "RGB" and img.size == (20, 16) and label == 1
    val = build_dataset(tmp_path, "val", kind="imagefolder")
    assert val.classes == ["cat", "dog"] and val.targets == [1]  # labels follow the training classes


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"not found: .*nowhere.*ROOT/train/<class>/<image>"):
        build_dataset(tmp_path / "nowhere", "train", kind="imagefolder")
    with pytest.raises(DatasetError, match="cannot tell which dataset"):
        build_dataset(tmp_path / "nowhere", "train")
    make_folder(tmp_path, per_class=2)
    (tmp_path / "train" / "empty_class").mkdir()
    with pytest.raises(DatasetError, match=r"hold no image.*empty_class"):
        build_dataset(tmp_path, "train")


def test_list_dataset(tmp_path):
    make_list(tmp_path, n=6, labels=(0, 2))
    ds = build_dataset(tmp_path, "train")
    assert type(ds).__name__ == "ListDataset"
    assert ds.classes == ["0", "1", "2"] and ds.targets == [0, 2, 0, 2, 0, 2]
    img, label = ds[1]
    assert img.size == (20, 16) and label == 2
    (tmp_path / "labels.txt").write_text("zero\none\ntwo\n")
    val = build_dataset(tmp_path, "val", kind="list")
    assert val.classes == ["zero", "one", "two"] and len(val) == 2


def test_list_dataset_errors(tmp_path):
    with pytest.raises(DatasetError, match="train_list.txt"):
        build_dataset(tmp_path, "train", kind="list")
    make_list(tmp_path, n=4)
    with open(tmp_path / "train_list.txt", "a") as f:
        f.write("images/gone_1.png 0\nimages/gone_2.png 1\nimages/sub/gone_3.png 1\n")
    with pytest.raises(DatasetError, match=r"3 image\(s\) that do not exist.*gone_1\.png"):
        build_dataset(tmp_path, "train")
    (tmp_path / "train_list.txt").write_text("images/img_0.png zero\n")
    with pytest.raises(DatasetError, match=r"train_list.txt:1"):
        build_dataset(tmp_path, "train")


# ---------------------------------------------------------------------------- corrupt images
def corrupt_folder(tmp_path: Path) -> Path:
    make_folder(tmp_path, per_class=4)
    bad = tmp_path / "train" / "cat" / "cat_0.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    (tmp_path / "train" / "dog" / "zzz.jpg").write_bytes(b"not an image at all")
    return tmp_path


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_images_skipped_and_counted(tmp_path, num_workers):
    root = corrupt_folder(tmp_path)
    tf = build_transform(False, input_size=16, mean=MEAN3, std=STD3, crop_pct=1.0)
    ds = build_dataset(root, "train", transform=tf)
    loader = build_loader(ds, batch_size=3, train=False, seed=0, num_workers=num_workers)
    for epoch in range(2):
        loader.set_epoch(epoch)
        n = sum(len(y) for _, y in loader)
        assert n == len(ds) - 2
        assert loader.skipped == 2 and loader.skipped_in_epoch() == 2
        assert sorted(Path(s.path).name for s in loader.skipped_files) == ["cat_0.png", "zzz.jpg"]
        assert all(s.reason for s in loader.skipped_files)
    assert loader.skipped_total == 4


def test_corrupt_image_strict(tmp_path):
    root = corrupt_folder(tmp_path)
    ds = build_dataset(root, "train", strict_images=True)
    with pytest.raises(CorruptImageError, match="cat_0.png"):
        ds[0]
    loader = build_loader(ds, batch_size=4, train=False, seed=0, num_workers=0)
    with pytest.raises(CorruptImageError, match="cat_0.png"):
        list(loader)


def test_all_corrupt_batch_dropped(tmp_path):
    root = corrupt_folder(tmp_path)
    tf = build_transform(False, input_size=16, mean=MEAN3, std=STD3, crop_pct=1.0)
    ds = build_dataset(root, "train", transform=tf)
    ds.samples = [ds.samples[0]] + ds.samples  # two corrupt files fill the first batch of 1... twice
    loader = build_loader(ds, batch_size=1, train=False, seed=0, num_workers=0)
    assert sum(len(y) for _, y in loader) == len(ds) - 3 and loader.skipped == 3


def test_all_corrupt_batch_fatal_in_distributed_training(tmp_path):
    root = corrupt_folder(tmp_path)
    tf = build_transform(False, input_size=16, mean=MEAN3, std=STD3, crop_pct=1.0)
    ds = build_dataset(root, "train", transform=tf)
    raised = 0
    for rank in range(2):  # with batches of one, the rank holding a corrupt file cannot skip a step
        loader = build_loader(ds, batch_size=1, train=True, seed=0, num_workers=0, rank=rank, world_size=2)
        try:
            list(loader)
        except DatasetError as e:
            assert "unreadable" in str(e) and f"rank {rank}" in str(e)
            raised += 1
    assert raised >= 1


# ---------------------------------------------------------------------------- transforms
def test_eval_transform_hand_computed():
    # a constant image survives resize and crop unchanged; normalization is (v/255 - mean) / std
    img = Image.new("RGB", (300, 250), (255, 128, 0))
    tf = build_transform(False, input_size=224, mean=MEAN3, std=STD3, crop_pct=0.875)
    x = tf(img)
    assert x.shape == (3, 224, 224)
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), MEAN3, STD3)]
    for c in range(3):
        assert torch.allclose(x[c], torch.full((224, 224), expected[c]), atol=1e-5)
    geometry = [t for t in tf.transforms if type(t).__name__ == "ResizeCenterCrop"][0]
    assert geometry.resize == 256 and geometry.interpolation.value == "bicubic"  # int(224 / 0.875)


def test_eval_transform_geometry():
    # a horizontal ramp 0..299: after resizing the shorter side 250 -> 256 (x 1.024) and cropping 224, the
    # center column keeps the image's center value, as computed by hand
    ramp = np.tile(np.linspace(0, 255, 300), (250, 1)).astype(np.uint8)
    tf = build_transform(False, input_size=224, mean=(0.0,), std=(1.0,), crop_pct=0.875)
    x = tf(Image.fromarray(ramp))
    assert x.shape == (1, 224, 224)
    assert x[0, :, 112].mean().item() == pytest.approx(ramp[0, 150] / 255, abs=2 / 255)
    # the crop keeps 224 of the 307 resized columns: the left edge is column 41.5 of 307, i.e. 40.5/300 of
    # the ramp, value ~ 34.6
    assert x[0, :, 0].mean().item() * 255 == pytest.approx(41.5 / 307 * 300 * 255 / 299, abs=3)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_normalized_tensor_matches_torchvision(mode):
    from torchvision import transforms as T

    from pitvit.data.transforms import ToNormalizedTensor

    c = 1 if mode == "L" else 3
    mean, std = MEAN3[:c], STD3[:c]
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)).convert(mode)
    ref = T.Normalize(mean, std)(T.ToTensor()(img))
    out = ToNormalizedTensor(mean, std)(img)
    assert out.shape == (c, 9, 7) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out, ref)


def test_pad_crop_flip_against_numpy_pad():
    from pitvit.data.transforms import RandomPadCropFlip

    a = np.random.default_rng(2).integers(1, 256, (28, 28), dtype=np.uint8)
    tf = RandomPadCropFlip((28, 28), padding=2, hflip=0.5)
    seen = set()
    for k in range(40):
        random.seed(k)
        out = tf(Image.fromarray(a))
        random.seed(k)  # the same draws, applied to an explicitly padded image
        i, j, flip = random.randint(0, 4), random.randint(0, 4), random.random() < 0.5
        ref = np.pad(a, 2)[i:i + 28, j:j + 28]
        np.testing.assert_array_equal(out, ref[:, ::-1] if flip else ref)
        seen.add((i, j, flip))
    assert len(seen) > 10


def test_train_transforms_shapes_and_presets():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    for aug in ("official", "paddle", "none", {"preset": "official", "re_prob": 0.0}):
        tf = build_transform(True, input_size=32, mean=MEAN3, std=STD3, aug=aug)
        assert tf(img).shape == (3, 32, 32)
    gray = build_transform(True, input_size=(1, 28, 28), mean=(0.286,), std=(0.353,), aug="small")
    assert gray(img).shape == (1, 28, 28)
    small_ra = build_transform(True, input_size=(1, 28, 28), mean=(0.286,), std=(0.353,),
                               aug={"preset": "small", "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.5})
    assert small_ra(img).shape == (1, 28, 28)
    gray_ra = build_transform(True, input_size=(1, 28, 28), mean=(0.286,), std=(0.353,), aug="official")
    assert gray_ra(img.convert("L")).shape == (1, 28, 28)
    assert resolve_aug("paddle")["auto_augment"] == "original" and resolve_aug("paddle")["hflip"] == 0
    with pytest.raises(ValueError, match="valid"):
        resolve_aug({"re_probb": 0.1})
    with pytest.raises(ValueError, match="mean and std"):
        build_transform(True, input_size=(1, 28, 28), mean=MEAN3, std=STD3)


# ---------------------------------------------------------------------------- seeding and workers
def fmnist_train(tmp_path: Path, preset: str = "official"):
    write_fmnist(tmp_path, n_train=16)
    aug = {"preset": "official", "scale": (0.6, 1.0), "re_prob": 0.5} if preset == "official" else preset
    tf = build_transform(True, input_size=(1, 28, 28), mean=(0.286,), std=(0.353,), aug=aug)
    return build_dataset(tmp_path, "train", transform=tf)


def epoch_batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.mark.parametrize("preset", ["official", "small"])
def test_worker_count_independence(tmp_path, preset):
    ds = fmnist_train(tmp_path, preset)
    runs = []
    for workers in (0, 2):
        loader = build_loader(ds, batch_size=4, train=True, seed=7, num_workers=workers)
        runs.append([epoch_batches(loader, e) for e in (0, 1)])
    for e in (0, 1):
        for (x0, y0), (x2, y2) in zip(runs[0][e], runs[1][e]):
            assert torch.equal(x0, x2) and torch.equal(y0, y2)
    # another epoch: another order and other augmentations of the same sample
    seeded = SeededDataset(ds, seed=7)
    a, b = seeded[(3, 0, 0)][0], seeded[(3, 1, 0)][0]
    assert not torch.equal(a, b)
    assert torch.equal(a, seeded[(3, 0, 0)][0])


def test_main_process_rng_untouched(tmp_path):
    ds = fmnist_train(tmp_path)
    loader = build_loader(ds, batch_size=4, train=True, seed=7, num_workers=0)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = torch.rand(1), random.random(), np.random.rand()
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    list(loader)
    assert (torch.rand(1), random.random(), np.random.rand()) == expected


# ---------------------------------------------------------------------------- sampling
def keys_of(sampler):
    return [list(b) for b in sampler]


@pytest.mark.parametrize("n,drop_last", [(40, True), (41, False), (37, True)])
def test_sampler_union_over_ranks(n, drop_last):
    b, world = 4, 2
    one = EpochBatchSampler(n, batch_size=b * world, shuffle=True, seed=3, drop_last=drop_last)
    ranks = [EpochBatchSampler(n, batch_size=b, shuffle=True, seed=3, rank=r, world_size=world,
                               drop_last=drop_last) for r in range(world)]
    for epoch in (0, 5):
        for s in [one] + ranks:
            s.set_epoch(epoch)
        full = keys_of(one)
        parts = [keys_of(s) for s in ranks]
        assert len(parts[0]) == len(parts[1]) == len(full) == len(one)
        for step, batch in enumerate(full):
            union = parts[0][step] + parts[1][step]
            if drop_last or step < len(full) - 1:
                assert union == batch  # rank 0's piece, then rank 1's: exactly the big batch
            else:  # 41 samples, last step: 1 sample padded by one from the order's start
                assert union[:len(batch)] == batch and len(parts[0][step]) == len(parts[1][step])
    all_keys = [k for batch in full for k in batch]
    assert len(set(k[0] for k in all_keys)) == len(all_keys)  # a permutation: no index twice


def test_loaders_two_ranks_concatenate_to_one(tmp_path):
    ds = fmnist_train(tmp_path)
    one = build_loader(ds, batch_size=4, train=True, seed=5, num_workers=0)
    ranks = [build_loader(ds, batch_size=2, train=True, seed=5, num_workers=0, rank=r, world_size=2)
             for r in range(2)]
    big = epoch_batches(one, 1)
    parts = [epoch_batches(r, 1) for r in ranks]
    assert len(big) == len(parts[0]) == len(parts[1]) == len(one) == 4
    for step, (x, y) in enumerate(big):
        assert torch.equal(x, torch.cat([parts[0][step][0], parts[1][step][0]]))
        assert torch.equal(y, torch.cat([parts[0][step][1], parts[1][step][1]]))


def test_seeded_dataset_pickles(tmp_path):
    import pickle

    seeded = SeededDataset(fmnist_train(tmp_path), seed=3)
    copy = pickle.loads(pickle.dumps(seeded))
    assert torch.equal(copy[(2, 4, 0)][0], seeded[(2, 4, 0)][0]) and copy.classes == seeded.classes


def test_sampler_eval_covers_each_sample_once():
    for world in (1, 2, 3):
        seen = []
        for r in range(world):
            s = EpochBatchSampler(10, batch_size=2, shuffle=False, seed=0, rank=r, world_size=world,
                                  drop_last=False, pad=False)
            batches = keys_of(s)
            assert len(batches) == len(s)
            seen += [k[0] for b in batches for k in b]
        assert sorted(seen) == list(range(10))


def test_repeated_aug():
    s = EpochBatchSampler(30, batch_size=6, shuffle=True, seed=1, num_repeats=3)
    order = s.global_order()
    assert len(order) == 30
    for j in range(0, 30, 3):
        (i0, e0, r0), (i1, _, r1), (i2, _, r2) = order[j:j + 3]
        assert i0 == i1 == i2 and (r0, r1, r2) == (0, 1, 2) and e0 == 0
    assert len({k[0] for k in order}) == 10
    # the repeats get different augmentations
    ds = SeededDataset(ToyDataset(30), seed=1)
    assert not torch.equal(ds[order[0]][0], ds[order[1]][0])


def test_start_step_resume_equals_tail(tmp_path):
    ds = fmnist_train(tmp_path)
    full = build_loader(ds, batch_size=3, train=True, seed=11, num_workers=0)
    whole = epoch_batches(full, 2)
    resumed = build_loader(ds, batch_size=3, train=True, seed=11, num_workers=0, start_step=2)
    assert len(resumed) == len(whole) - 2
    tail = epoch_batches(resumed, 2)
    assert len(tail) == len(whole) - 2
    for (x, y), (xw, yw) in zip(tail, whole[2:]):
        assert torch.equal(x, xw) and torch.equal(y, yw)
    assert len(epoch_batches(resumed, 3)) == len(whole)  # the skip applies to one iteration only


def test_loader_seed_changes_order():
    ds = ToyDataset(24)
    a = epoch_batches(build_loader(ds, batch_size=4, train=True, seed=0, num_workers=0), 0)
    b = epoch_batches(build_loader(ds, batch_size=4, train=True, seed=1, num_workers=0), 0)
    assert [y.tolist() for _, y in a] != [y.tolist() for _, y in b] or not torch.equal(a[0][0], b[0][0])


# ---------------------------------------------------------------------------- mixup and loss
@pytest.mark.parametrize("batch", [8, 7])
def test_mixup_soft_targets(batch):
    np.random.seed(0)
    mixup = build_mixup(num_classes=5)
    x = torch.randn(batch, 3, 8, 8)
    y = torch.arange(batch) % 5
    for _ in range(4):  # covers both mixup and cutmix draws
        xm, t = mixup(x.clone(), y)
        assert xm.shape == x.shape and t.shape == (batch, 5)
        assert torch.allclose(t.sum(1), torch.ones(batch))
        assert (t >= 0).all()
    assert build_mixup(num_classes=5, mixup_alpha=0.0, cutmix_alpha=0.0) is None


def test_posterize_to_zero_bits_gives_black_not_an_error():
    # rand-m9-mstd0.5-inc1 reaches PosterizeIncreasing at magnitude 10 (0 bits), which Pillow 13 refuses.
    from PIL import Image

    from pitvit.data.transforms import _posterize_zero_bits_safe
    from timm.data.auto_augment import rand_augment_transform

    ra = _posterize_zero_bits_safe(rand_augment_transform("rand-m10-n1-inc1", {}))
    (op,) = [o for o in ra.ops if o.name == "PosterizeIncreasing"]
    op.prob, op.magnitude_std = 1.0, 0  # always applied, magnitude exactly 10: 4 - 10 * 4 / 10 = 0 bits
    img = Image.new("RGB", (8, 6), (200, 100, 50))
    out = op(img)
    assert out.size == img.size and out.getextrema() == ((0, 0), (0, 0), (0, 0))
    op.magnitude = 5  # 2 bits kept: 200 -> 192, 100 -> 64, 50 -> 0
    assert op(img).getpixel((0, 0)) == (192, 64, 0)


# ---------------------------------------------------------------------------- faults
@pytest.mark.parametrize("persistent", [False, True], ids=["fresh-workers", "persistent-workers"])
def test_mid_epoch_resume_is_exact_with_any_number_of_workers(persistent):
    """Reference: the uninterrupted epoch read in the main process. Resuming at step k (what a run restarted after
    SIGTERM does) must give exactly its batches k.., whatever the number of workers; torch's multi-process
    iterator calls ``iter(batch_sampler)`` twice on first use, which once made 1 worker replay 6 batches
    instead of 2."""
    ds = ToyDataset(24)
    ref = build_loader(ds, batch_size=4, train=True, seed=3, num_workers=0)
    full = epoch_batches(ref, 1)
    assert len(full) == 6
    for workers in (0, 1, 2):
        loader = build_loader(ds, batch_size=4, train=True, seed=3, num_workers=workers,
                              persistent_workers=persistent)
        for start in (4, 0, 2, 6, 1):
            loader.set_epoch(1, start_step=start)
            assert len(loader) == 6 - start
            got = [(x.clone(), y.clone()) for x, y in loader]
            assert len(got) == 6 - start, (workers, start)
            for (x, y), (xr, yr) in zip(got, full[start:]):
                assert torch.equal(x, xr) and torch.equal(y, yr), (workers, start)
            assert len(loader) == 6  # the start step applied to that iteration only
        loader.sampler.set_start_step(3)  # the engine's way of resuming
        assert len([b for b in loader]) == 3 and len(loader) == 6


def test_16_bit_grayscale_images_are_scaled_not_clipped(tmp_path):
    """A 16-bit value v becomes round(v * 255 / 65535), computed by hand below; before, PIL's conversion clipped
    every value above 255 to white."""
    from pitvit.data.images import load_image

    v = np.array([[0, 128, 129, 257], [32767, 32896, 65278, 65535]], dtype=np.uint16)
    expected = np.array([[0, 0, 1, 1], [127, 128, 254, 255]], dtype=np.uint8)
    Image.fromarray(v).save(tmp_path / "g16.png")  # mode I;16
    Image.fromarray(v.astype(np.int32)).save(tmp_path / "g32.tif")  # mode I (32-bit integers)
    for name in ("g16.png", "g32.tif"):
        img = load_image(str(tmp_path / name), strict=True)
        assert img.mode == "L", name
        np.testing.assert_array_equal(np.asarray(img), expected, err_msg=name)
    tf = build_transform(False, input_size=(2, 4), mean=(0.0,), std=(1.0,), crop_pct=1.0)
    make_folder(tmp_path / "ds", per_class=1)
    (tmp_path / "g16.png").rename(tmp_path / "ds" / "train" / "cat" / "g16.png")
    ds = build_dataset(tmp_path / "ds", "train", transform=tf)
    x, _ = ds[[Path(p).name for p, _ in ds.samples].index("g16.png")]
    np.testing.assert_array_equal((x[0] * 255).round().numpy().astype(np.uint8), expected)


def test_a_skipped_image_names_its_reason(tmp_path, monkeypatch, caplog):
    """An image over Pillow's decompression-bomb limit (more than twice ``MAX_IMAGE_PIXELS``) is skipped with
    Pillow's reason in the log and beside the path, not as an anonymous "unreadable" file."""
    make_folder(tmp_path, per_class=2)  # 20 x 16 = 320 pixels each
    save_image(tmp_path / "train" / "dog" / "huge.png", seed=9, size=(64, 64))  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    tf = build_transform(False, input_size=16, mean=MEAN3, std=STD3, crop_pct=1.0)
    loader = build_loader(build_dataset(tmp_path, "train", transform=tf), batch_size=5, train=False, seed=0,
                          num_workers=0)
    with caplog.at_level("WARNING", logger="pitvit"):
        assert sum(len(y) for _, y in loader) == 4
    (record,) = [r for r in caplog.records if "huge.png" in r.getMessage()]
    assert "DecompressionBombError" in record.getMessage()
    (skipped,) = loader.skipped_files
    assert Path(skipped.path).name == "huge.png" and "DecompressionBombError" in skipped.reason


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_strict_corrupt_image_error_is_one_line_from_workers(tmp_path, num_workers):
    """Reference: the error the dataset raises for the file in the main process. From a worker process it must
    reach the caller as the same one-line CorruptImageError, not torch's 30-line worker traceback."""
    root = corrupt_folder(tmp_path)
    tf = build_transform(False, input_size=16, mean=MEAN3, std=STD3, crop_pct=1.0)
    ds = build_dataset(root, "train", transform=tf, strict_images=True)
    with pytest.raises(CorruptImageError) as direct:
        ds[0]
    loader = build_loader(ds, batch_size=4, train=False, seed=0, num_workers=num_workers)
    with pytest.raises(CorruptImageError) as raised:
        list(loader)
    assert str(raised.value) == str(direct.value)
    assert "\n" not in str(raised.value) and "cat_0.png" in str(raised.value)
