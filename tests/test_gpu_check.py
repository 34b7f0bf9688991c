"""``benchmarks/gpu_check.py``, the one command for every GPU figure, kept from rotting while no GPU is lent: its
reduced form runs every section on the CPU (tiny models, gloo for torchrun) and writes the JSON and Markdown the
lead reads after a GPU run. The throughput targets are an H200's and are not judged here; what is judged (logits
on the device equal the CPU's, bf16 and fp16 steps finite and learning, an epoch that resumes under both
launchers) must hold."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ["parity", "amp_steps", "keyed_draws", "train_epoch", "pipelines", "vs_timm"]


def _gpu_check(tmp_path: Path, *args: str, timeout: float) -> tuple[dict, str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), *args], env=env,
                       capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text(), r.stdout


def _check_reduced_run(data: dict, md: str, stdout: str, compiled: bool, budget: float = 480.0) -> None:
    meta, sections = data["meta"], data["sections"]
    assert (meta["mode"], meta["device"], meta["budget_s"], meta["compile"]) == ("reduced", "cpu", budget, compiled)
    assert meta["auto_precision"] in ("fp32", "bf16") and 0 < meta["elapsed_s"] < budget
    assert list(sections) == SECTIONS
    for name, s in sections.items():
        assert (s["status"], s["error"], s["skipped"]) == ("ok", None, []), name
        assert s["results"] and s["checks"], name
        assert f"## {name}: ok" in md
    judged = [c for s in sections.values() for c in s["checks"] if c["ok"] is not None]
    assert {c["what"].split(",")[0] for c in judged} >= {"cpu logits = CPU logits", "bf16 training step",
                                                        "fp16 training step with GradScaler", "pitvit train"}
    assert all(c["ok"] is True for c in judged), judged
    assert all(c["ok"] is None for n in ("pipelines", "vs_timm") for c in sections[n]["checks"])  # an H200's

    parity = sections["parity"]["results"]
    assert [r["model"] for r in parity] == ["pit_test", "pit_nano", "pit_ti_distilled"]
    assert all(r["max_abs_diff"] == 0.0 for r in parity)  # the CPU against itself: the same kernels
    amp = sections["amp_steps"]["results"]
    assert [(r["precision"], r["autocast_dtype"]) for r in amp] == [("bf16", "bfloat16"), ("fp16", "float16")]
    assert amp[1]["scale"] > 0 and all(len(r["losses"]) == 4 for r in amp)
    keyed = sections["keyed_draws"]["results"]
    assert len(keyed) == 1 and keyed[0]["bits_equal_cpu"] and keyed[0]["plain_s"] > 0 and keyed[0]["keyed_s"] > 0
    runs = [(r["launcher"], r["epochs"], r["ckpt_epoch"], r["resumed"]) for r in sections["train_epoch"]["results"]]
    assert runs == [("pitvit", 1, 1, False), ("pitvit", 2, 2, True), ("torchrun", 1, 1, False),
                    ("torchrun", 2, 2, True)]
    rows = [r["key"] for r in sections["pipelines"]["results"] if "key" in r]
    assert rows == ["model_only", "cpu_pipeline", "gpu_pipeline", "cpu_pipeline_only", "gpu_pipeline_only"]
    summary = sections["pipelines"]["results"][-1]["summary"]
    assert summary["gpu_vs_model_only"] > 0 and summary["fidelity_levels"]["eval_max"] == 0  # CPU decodes alike
    timm_rows = sections["vs_timm"]["results"]
    assert [r["kind"] for r in timm_rows] == (["pitvit benchmark --compare timm --amp auto", "eager", "eager"]
                                              + ["compiled", "compiled"] * compiled)
    assert {(r["model"], r["mode"]) for r in timm_rows[1:]} == {("pit_ti", "train"), ("pit_ti", "infer")}
    for r in timm_rows[1:]:
        assert set(r["settings"]) == ({"fp32", "fp32+compile"} if r["kind"] == "compiled" else {"fp32"})
        assert all(s["pitvit_img_s"] > 0 and s["timm_img_s"] > 0 for s in r["settings"].values())
    assert "## Checks" in md and md in stdout


def test_reduced_run_every_section(tmp_path):
    # no wall-time assertion: on a busy machine it measures the machine (the script's own budget is in meta)
    data, md, stdout = _gpu_check(tmp_path, "--reduced", timeout=600)
    _check_reduced_run(data, md, stdout, compiled=False)


@pytest.mark.slow
def test_reduced_run_compiled(tmp_path):
    """The compiled measurements too (inductor on the CPU: several minutes, so a larger budget than a GPU's)."""
    data, md, stdout = _gpu_check(tmp_path, "--reduced", "--compile", "--budget-s", "1500", timeout=1600)
    _check_reduced_run(data, md, stdout, compiled=True, budget=1500.0)


@pytest.fixture()
def gpu_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "T0", time.monotonic())
    return module


def test_sections_are_independent_and_share_the_budget(gpu_check, tmp_path, monkeypatch):
    """A failing section is recorded with its traceback and the next runs; a section gets its budget plus what
    earlier ones left, less what later ones need; one that finds no time left is recorded as skipped. (A fake
    clock: the shares are exact.)"""
    import types

    import torch

    clock = [0.0]
    monkeypatch.setattr(gpu_check, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(gpu_check, "T0", 0.0)
    seen = {}

    def fine(ctx, sec):
        seen[sec.name] = sec.left()
        clock[0] += 10

    def broken(ctx, sec):
        raise RuntimeError("kaput")

    def greedy(ctx, sec):  # overruns its share, leaving the last section 2 s
        seen[sec.name] = sec.left()
        clock[0] = sec.deadline + gpu_check.BUDGETS["vs_timm"] - 2

    gpu_check.SECTIONS.update(parity=fine, amp_steps=broken, keyed_draws=fine, train_epoch=fine, pipelines=greedy,
                              vs_timm=fine)
    assert gpu_check.BUDGETS == {"parity": 40, "amp_steps": 25, "keyed_draws": 20, "train_epoch": 90,
                                 "pipelines": 150, "vs_timm": 155}
    ctx = gpu_check.Ctx(torch.device("cpu"), True, False, gpu_check.REDUCED, tmp_path, tmp_path / "out",
                        {"date": "d", "device_name": "cpu", "mode": "reduced", "torch": "t", "torchvision": "v",
                         "timm": "m", "cuda": None, "cpus": 2, "cpu": "c", "auto_precision": "fp32", "budget_s": 480,
                         "command": "c", "elapsed_s": 0.0})
    gpu_check.run_sections(ctx, list(gpu_check.SECTION_NAMES), budget_s=480)
    status = {n: s.status for n, s in ctx.sections.items()}
    assert status == {"parity": "ok", "amp_steps": "failed", "keyed_draws": "ok", "train_epoch": "ok",
                      "pipelines": "ok", "vs_timm": "skipped"}
    assert "kaput" in ctx.sections["amp_steps"].error
    # parity: 480 s less the 25 + 20 + 90 + 150 + 155 s the later sections keep (its own 40 s: the budgets add up
    # to 480); keyed_draws: its 20 s plus the 30 s parity left and the failed section's 25 s; train_epoch: its 90 s
    # plus the 65 s keyed_draws left; pipelines: its 150 s plus the 145 s train_epoch left
    assert seen == {"parity": 40, "keyed_draws": 20 + 30 + 25, "train_epoch": 90 + 65, "pipelines": 150 + 145}
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert data["sections"]["vs_timm"]["status"] == "skipped"
    assert data["sections"]["vs_timm"]["skipped"] == ["no time left"]
    assert data["sections"]["amp_steps"]["status"] == "failed" and data["meta"]["elapsed_s"] == 478
