"""Test fixtures: a tiny dataset in ImageNet's layouts, made by the tests.

``write_folder`` writes the extracted layout (``train/WNID/WNID_K.JPEG``, validation images sorted into class
folders, as the usual extraction scripts leave them); ``write_archives`` writes the same images as ImageNet's
three original archives: the training tar of per-class tars, the flat validation tar, and the devkit with a
``data/meta.mat`` written by ``scipy.io.savemat`` in the devkit's structure (a ``synsets`` struct array with
``ILSVRC2012_ID``, ``WNID``, ``words``, ``gloss``, ``num_children``, ``children``, ``wordnet_height``,
``num_train_images``; leaves first, their IDs NOT in WNID order, then an inner node) and
``data/ILSVRC2012_validation_ground_truth.txt``.
"""
from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# ILSVRC2012_ID order on purpose differs from the sorted WNIDs (as in the real devkit: ID 1 is n02119789)
WNIDS_BY_ID = ["n03000003", "n01000001", "n02000002"]
CLASSES = sorted(WNIDS_BY_ID)


def jpeg(rng: np.random.Generator, c: int, size: int = 24) -> bytes:
    a = (rng.random((size, size, 3)) * 90).astype(np.uint8)
    a[:, 8 * c:8 * c + 8] += 150
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_folder(root: Path, n_train: int = 8, n_val: int = 2, seed: int = 0) -> tuple[Path, list[int]]:
    """The extracted layout; returns ``(root, ground truth IDs of val images 1..N)``."""
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(CLASSES):
        d = root / "train" / wnid
        d.mkdir(parents=True)
        for k in range(n_train):
            (d / f"{wnid}_{k}.JPEG").write_bytes(jpeg(rng, c))
    truth = []
    order = [c for c in range(len(CLASSES)) for _ in range(n_val)]
    random.Random(seed).shuffle(order)
    for k, c in enumerate(order, 1):
        wnid = CLASSES[c]
        (root / "val" / wnid).mkdir(parents=True, exist_ok=True)
        (root / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG").write_bytes(jpeg(rng, c))
        truth.append(WNIDS_BY_ID.index(wnid) + 1)
    return root, truth


def write_meta_mat(path: Path, wnids_by_id: list[str]) -> None:
    from scipy.io import savemat

    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    n = len(wnids_by_id) + 1
    synsets = np.zeros((n, 1), dtype=[(f, "O") for f in fields])
    for i, wnid in enumerate(wnids_by_id):
        synsets[i, 0] = (np.array([[i + 1]], np.uint16), np.array([wnid]), np.array([f"class {wnid}"]),
                         np.array(["a leaf"]), np.array([[0]], np.uint8), np.zeros((1, 0), np.uint8),
                         np.array([[0]], np.uint8), np.array([[8]], np.uint16))
    synsets[n - 1, 0] = (np.array([[n]], np.uint16), np.array(["n00001740"]), np.array(["entity"]),
                         np.array(["the root"]), np.array([[n - 1]], np.uint8),
                         np.arange(1, n, dtype=np.uint16).reshape(1, -1), np.array([[2]], np.uint8),
                         np.array([[0]], np.uint16))
    savemat(path, {"synsets": synsets})


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_archives(folder: Path, out: Path, truth: list[int], wnids_by_id: list[str] | None = None) -> Path:
    """ImageNet's three archives holding ``folder``'s images (members in a shuffled order)."""
    out.mkdir(parents=True, exist_ok=True)
    shuffle = random.Random(1).shuffle
    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in sorted((folder / "train").iterdir(), reverse=True):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                files = sorted(wnid.iterdir())
                shuffle(files)
                for f in files:
                    _add(inner, f.name, f.read_bytes())
            _add(outer, f"{wnid.name}.tar", buf.getvalue())
    val = sorted((folder / "val").glob("*/*.JPEG"))
    shuffle(val)
    with tarfile.open(out / "ILSVRC2012_img_val.tar", "w") as tf:
        for f in val:
            _add(tf, f.name, f.read_bytes())
    mat = out / "meta.mat"
    write_meta_mat(mat, wnids_by_id or WNIDS_BY_ID)
    with tarfile.open(out / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tf:
        _add(tf, "ILSVRC2012_devkit_t12/data/meta.mat", mat.read_bytes())
        _add(tf, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
             "".join(f"{t}\n" for t in truth).encode())
        _add(tf, "ILSVRC2012_devkit_t12/readme.txt", b"devkit")
    mat.unlink()
    return out
