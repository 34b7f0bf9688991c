"""The in-memory stage (data.pipeline=memory) and the held-out validation split (data.holdout).

References: torchvision's ``ToTensor`` + ``Normalize`` and its functional ``pad``/``crop``/``hflip`` for the
images a batch may hold; numpy's legacy ``RandomState(0)`` stream, which numpy keeps fixed across versions, for
which images are held out.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision import transforms as T

from pitvit.data import MemoryStage, Subset, build_loader, holdout_indices
from pitvit.utils.errors import ConfigError

MEAN, STD = [0.2860], [0.3530]


class Images:
    """A dataset held in memory, as FashionMNIST is: ``images`` uint8 (N, H, W), ``targets``, ``classes``."""

    def __init__(self, n: int = 40, hw: int = 8, channels: int = 0, seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        shape = (n, hw, hw) + ((channels,) if channels else ())
        self.images = g.integers(0, 256, shape, dtype=np.uint8)
        self.targets = [int(t) for t in g.integers(0, 10, n)]
        self.classes = [str(i) for i in range(10)]

    def __len__(self) -> int:
        return len(self.targets)


def _reference(img: np.ndarray, mean=MEAN, std=STD) -> torch.Tensor:
    return T.Normalize(mean, std)(T.ToTensor()(np.array(img)))


def _batches(ds, stage, train=True, epoch=0, start_step=0, batch_size=8, rank=0, world_size=1):
    loader = build_loader(ds, batch_size=batch_size, train=train, seed=3, stage=stage, num_workers=0, rank=rank,
                          world_size=world_size)
    loader.set_epoch(epoch, start_step)
    return list(loader)


def test_eval_batches_equal_torchvision_to_tensor_normalize():
    ds = Images(n=20)
    (x, y), *_ = _batches(ds, MemoryStage(input_size=8, mean=MEAN, std=STD), train=False, batch_size=20)
    ref = torch.stack([_reference(im) for im in ds.images])
    assert torch.equal(x, ref)  # bit for bit: the same float32 operations
    assert y.tolist() == ds.targets


def test_rgb_images_normalize_per_channel():
    ds = Images(n=6, channels=3)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (x, _), = _batches(ds, MemoryStage(input_size=8, mean=mean, std=std), train=False, batch_size=6)
    assert torch.equal(x, torch.stack([_reference(im, mean, std) for im in ds.images]))


def test_flip_only_is_torchvision_hflip():
    ds = Images(n=16)
    stage = MemoryStage(input_size=8, mean=MEAN, std=STD, aug={"preset": "none", "hflip": 1.0})
    refs = [TF.hflip(_reference(im)) for im in ds.images]
    (x, y), = _batches(ds, stage, batch_size=16)
    for img, label in zip(x, y.tolist()):
        source = [i for i, r in enumerate(refs) if torch.equal(img, r)]
        assert len(source) == 1 and ds.targets[source[0]] == label


def test_pad_crop_flip_draws_every_torchvision_candidate():
    """Each augmented image is one of torchvision's pad(2) -> crop(dy, dx) [-> hflip] of its source, and over
    many batches every one of the 5 x 5 x 2 candidates occurs."""
    ds = Images(n=1, hw=8)
    ds.images = np.repeat(ds.images, 64, axis=0)
    ds.targets = ds.targets * 64
    stage = MemoryStage(input_size=8, mean=MEAN, std=STD, aug="small")  # pad 2, crop back, flip 0.5
    base = TF.pad(torch.from_numpy(ds.images[0])[None], [2])
    cands = {}
    for dy in range(5):
        for dx in range(5):
            c = TF.crop(base, dy, dx, 8, 8)
            cands[(dy, dx, 0)] = c
            cands[(dy, dx, 1)] = TF.hflip(c)
    norm = {k: (v.float() / 255 - MEAN[0]) / STD[0] for k, v in cands.items()}
    seen = set()
    for epoch in range(12):  # 768 draws: each of 50 candidates is missed with probability < 2e-7
        for x, _ in _batches(ds, stage, epoch=epoch, batch_size=32):
            for img in x:
                hit = [k for k, v in norm.items() if torch.equal(img, v)]
                assert hit, "an augmented image that no pad-crop-flip of the source gives"
                seen.update(hit)
    assert len(seen) == 50


def test_batches_depend_on_seed_epoch_step_only():
    """A run resumed at step 3 gets the batches an uninterrupted run got from step 3 on."""
    ds = Images(n=64)
    stage = MemoryStage(input_size=8, mean=MEAN, std=STD, aug="small")
    full = _batches(ds, stage, epoch=2)
    resumed = _batches(ds, stage, epoch=2, start_step=3)
    assert len(resumed) == len(full) - 3
    for (a, la), (b, lb) in zip(full[3:], resumed):
        assert torch.equal(a, b) and torch.equal(la, lb)
    other_epoch = _batches(ds, stage, epoch=3)
    assert not torch.equal(full[0][0], other_epoch[0][0])


def test_batches_do_not_depend_on_the_number_of_processes():
    """Two ranks of batch 4 get, between them, exactly the augmented batch one process of batch 8 gets: each
    sample's crop and flip are keyed by (seed, epoch, index), never by the rank (the sampler's sharding: rank r
    takes the r-th block of each global batch)."""
    ds = Images(n=64)
    stage = MemoryStage(input_size=8, mean=MEAN, std=STD, aug="small")
    one = _batches(ds, stage, epoch=1)
    ranks = [_batches(ds, stage, epoch=1, batch_size=4, rank=r, world_size=2) for r in range(2)]
    for step, (x, y) in enumerate(one):
        torch.testing.assert_close(x, torch.cat([ranks[0][step][0], ranks[1][step][0]]), rtol=0, atol=0)
        assert torch.equal(y, torch.cat([ranks[0][step][1], ranks[1][step][1]]))


@pytest.mark.parametrize("aug, words", [
    ({"preset": "official"}, ["aug.crop=rrc", "aug.auto_augment", "aug.re_prob", "data.pipeline=cpu"]),
    ({"preset": "small", "re_prob": 0.25}, ["aug.re_prob=0.25"]),
])
def test_augmentations_it_does_not_apply_are_refused(aug, words):
    with pytest.raises(ConfigError) as e:
        MemoryStage(input_size=8, mean=MEAN, std=STD, aug=aug)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_datasets_it_cannot_serve_are_refused():
    stage = MemoryStage(input_size=8, mean=MEAN, std=STD)
    with pytest.raises(ConfigError, match="held in memory"):
        stage.bind([(torch.zeros(1, 8, 8), 0)], seed=0, train=True, rank=0)
    with pytest.raises(ConfigError, match="does not resize"):
        MemoryStage(input_size=16, mean=MEAN, std=STD).bind(Images(), seed=0, train=True, rank=0)
    with pytest.raises(ConfigError, match="channel"):
        MemoryStage(input_size=8, mean=[0.5] * 3, std=[0.5] * 3).bind(Images(), seed=0, train=True, rank=0)


def test_holdout_indices_follow_numpys_fixed_stream():
    # numpy.random.RandomState(0).permutation(10) is [2, 8, 4, 9, 1, 6, 7, 3, 0, 5] in every numpy release
    train, held = holdout_indices(10, 3)
    assert held == [2, 4, 8] and train == [0, 1, 3, 5, 6, 7, 9]
    train, held = holdout_indices(60000, 5000)
    assert len(held) == 5000 and len(train) == 55000 and not set(train) & set(held)
    assert holdout_indices(60000, 5000) == (train, held)  # the same images every time
    for bad in (0, 10, -1):
        with pytest.raises(ConfigError, match="data.holdout"):
            holdout_indices(10, bad)


def test_subset_carries_images_and_targets():
    ds = Images(n=10)
    sub = Subset(ds, [7, 2])
    assert sub.targets == [ds.targets[7], ds.targets[2]] and sub.classes == ds.classes
    assert np.array_equal(sub.images, ds.images[[7, 2]])
    (x, y), = _batches(sub, MemoryStage(input_size=8, mean=MEAN, std=STD), train=False)
    assert torch.equal(x[0], _reference(ds.images[7])) and y.tolist() == sub.targets


@pytest.mark.parametrize("pipeline", ["memory", "cpu"])
def test_holdout_validates_on_training_images_never_the_test_split(tmp_path, pipeline):
    """data.holdout: validation batches are the held-out training images (by content, as torchvision would
    normalize them), training batches the rest; the test split is never read (its files are not even there)."""
    from test_data import write_fmnist

    from pitvit.data.fashion_mnist import read_idx
    from pitvit.train.recipes import load_config
    from pitvit.train.builders import build_data
    from pitvit.utils.distributed import DistInfo

    write_fmnist(tmp_path, n_train=40, n_test=6)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).unlink()
    cfg = load_config("demo", [f"data.path={tmp_path}", f"data.pipeline={pipeline}", "data.holdout=10",
                               "data.batch_size=4", "data.num_workers=0", "aug.preset=none"])
    data = build_data(cfg, DistInfo())
    images = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    train_idx, held = holdout_indices(40, 10)
    val = torch.cat([x for x, _ in data.val])
    assert torch.equal(val, torch.stack([_reference(images[i]) for i in held]))
    data.train.set_epoch(0)
    seen = torch.cat([x for x, _ in data.train])
    refs = [_reference(images[i]) for i in train_idx]
    assert len(seen) == 28 and all(any(torch.equal(x, r) for r in refs) for x in seen)  # 30 images, batches of 4


def test_demo_recipe_is_deterministic_with_two_threads(tmp_path):
    """README's claim for the demo: on the same machine and software, a second run gives the same weights, with
    both threads computing (the demo's train.threads=2) and the memory stage drawing the augmentation."""
    from test_data import write_fmnist

    from pitvit.train.recipes import load_config
    from pitvit.train.runner import fit

    write_fmnist(tmp_path / "fm", n_train=300, n_test=6)
    states = []
    for run in ("a", "b"):
        cfg = load_config("demo", [f"data.path={tmp_path / 'fm'}", "data.holdout=60", "data.batch_size=32",
                                   "train.epochs=2", "train.threads=2", f"train.output={tmp_path / run}",
                                   "log.plot=false"])
        fit(cfg)
        states.append(torch.load(tmp_path / run / "last.pt", weights_only=True)["state_dict"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
