"""What runs of timm's own model tests (``test_timm_models.py``, vendored from timm 1.0.31) in pitvit's suite.

Every test function of timm's file runs, unchanged, on every pitvit variant registered into timm
(``pitvit_*``, see ``pitvit.register_with_timm``); tests written for other timm models are deselected. The
large variants are marked slow. Tests that download published weights are skipped: pitvit's tests never use
the network (weights by name are tested offline in ``tests/test_hub.py``); ``PITVIT_TIMM_NETWORK=1`` runs them.

For comparison, ``PITVIT_TIMM_REFERENCE=1`` also runs timm's own ``pit_*`` through the same tests::

    PITVIT_TIMM_REFERENCE=1 python -m pytest tests/timm_suite -m '' -k 'pit_ or pitvit_'
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# timm's CI markers, registered so pytest does not warn about them (pytest-timeout's too, which may be absent).
MARKERS = ("base", "cfg", "cfg_nonstd", "forward", "backward", "torchscript", "features", "fxforward",
           "fxbackward", "timeout(seconds): a time limit, enforced only where pytest-timeout is installed")
NETWORK_TESTS = ("test_model_inference", "test_model_load_pretrained", "test_model_features_pretrained")
FAST_VARIANTS = ("pitvit_test", "pitvit_nano")


def _on(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _under_test(model_name: object) -> bool:
    if not isinstance(model_name, str):
        return False
    return model_name.startswith("pitvit_") or (_on("PITVIT_TIMM_REFERENCE") and model_name.startswith("pit_"))


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker if ":" in marker else f"{marker}: a timm CI group")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread: None) -> None:
    """The shared one-thread fixture for timm's tests too (tests/conftest.py says why)."""


@pytest.hookimpl(tryfirst=True)  # before -m 'not slow' deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        if HERE not in Path(item.path).parents:
            kept.append(item)
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        model_name = params.get("model_name")
        if not _under_test(model_name):
            dropped.append(item)
            continue
        if item.originalname in NETWORK_TESTS and not _on("PITVIT_TIMM_NETWORK"):
            item.add_marker(pytest.mark.skip(reason="downloads published weights from the Hugging Face Hub; "
                                                    "set PITVIT_TIMM_NETWORK=1 to run it"))
        if model_name.startswith("pitvit_") and model_name not in FAST_VARIANTS:
            item.add_marker(pytest.mark.slow)
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
