"""Shared test fixtures."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

# Real photos for the end-to-end tests: the 20 ImageNet JPEGs (label in the file name) that the foolbox wheel
# ships under foolbox/data/, fetched from PyPI once by the test set-up (the package is never imported).
FOOLBOX_WHEEL = "foolbox-3.3.4-py3-none-any.whl"
FOOLBOX_SHA256 = "11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb"
PHOTO_CACHE = Path(__file__).resolve().parent / ".cache" / "foolbox-3.3.4"


def _fetch_photos(dest: Path) -> Path:
    wheel = dest.parent / FOOLBOX_WHEEL
    if not wheel.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
               "-d", str(dest.parent), "foolbox==3.3.4"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            pytest.fail(f"the test photos come from PyPI's {FOOLBOX_WHEEL} and it could not be downloaded "
                        f"({' '.join(cmd)}: {done.stderr.strip()[-300:]}); put the wheel in {dest.parent}")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != FOOLBOX_SHA256:
        pytest.fail(f"{wheel} has sha256 {digest}, expected {FOOLBOX_SHA256}; delete it to fetch it again")
    tmp = dest.with_name(dest.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("foolbox/data/") and name.endswith((".jpg", ".png")):
                (tmp / Path(name).name).write_bytes(z.read(name))
    tmp.rename(dest)
    return dest


@pytest.fixture(scope="session")
def photo_dir() -> Path:
    """The foolbox wheel's data folder: ``imagenet_NN_LABEL.jpg`` (20 photos, about 500x375) and 28-32 px PNGs."""
    return PHOTO_CACHE if PHOTO_CACHE.is_dir() else _fetch_photos(PHOTO_CACHE)


@pytest.fixture(scope="session")
def imagenet_photos(photo_dir: Path) -> list[Path]:
    """The 20 ImageNet JPEGs, sorted; the ImageNet label is the last field of the name."""
    files = sorted(photo_dir.glob("imagenet_*.jpg"))
    assert len(files) == 20, f"expected 20 ImageNet photos in {photo_dir}, found {len(files)}"
    return files


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a busy 2-core machine two threads spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Run the tests that load OpenVINO last. Its CPU plugin leaves the calling thread a signal stack it later
    frees; a test process that afterwards forks loader workers can then be killed by SIGSEGV (SI_KERNEL) when a
    SIGCHLD arrives (seen with openvino 2026.4 on AVX-512 machines). The `pitvit` commands are not affected:
    each runs one backend in its own process."""
    uses_openvino = [i for i in items if i.module.__name__.endswith("test_backends") or "openvino" in i.name]
    items[:] = [i for i in items if i not in uses_openvino] + uses_openvino
