"""The ``auto`` precision: bf16 where the hardware computes it natively, fp32 elsewhere, said in a log line, and
reaching predict, benchmark, eval and training.

The capability probes are monkeypatched, so these tests hold on any CPU. The ``/proc/cpuinfo`` fallback is
checked on flag lines of real machines (Linux's flag names, documented in the kernel's
``arch/x86/include/asm/cpufeatures.h``): this project's AVX2-only AMD EPYC, an Intel Sapphire Rapids Xeon (AMX and
AVX-512 BF16) and an AMD Zen 4 EPYC (AVX-512 BF16, no AMX).
"""
from __future__ import annotations

import json
import logging

import pytest
import torch

from pitvit.cli import main as cli
from pitvit.utils import device as D

EPYC_AVX2 = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx "
    "mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid "
    "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave "
    "avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext "
    "vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb sha_ni xsaveopt "
    "xsavec xgetbv1 xsaves clzero xsaveerptr arat umip vaes vpclmulqdq rdpid fsrm")
SAPPHIRE_RAPIDS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht syscall "
    "nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq monitor ssse3 fma "
    "cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm "
    "3dnowprefetch cpuid_fault invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep "
    "bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl "
    "xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 wbnoinvd arat avx512vbmi umip pku ospke waitpkg "
    "avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid cldemote movdiri movdir64b "
    "fsrm md_clear serialize tsxldtrk arch_lbr amx_bf16 avx512_fp16 amx_tile amx_int8 arch_capabilities")
ZEN4 = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall nx "
    "mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good amd_lbr_v2 nopl nonstop_tsc cpuid extd_apicid "
    "aperfmperf rapl pni pclmulqdq monitor ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand "
    "lahf_lm cmp_legacy svm extapic cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw ibs skinit wdt tce topoext "
    "perfctr_core perfctr_nb bpext perfctr_llc mwaitx cpb cat_l3 cdp_l3 hw_pstate ssbd mba perfmon_v2 ibrs ibpb "
    "stibp ibrs_enhanced vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a avx512f avx512dq rdseed adx "
    "smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc "
    "cqm_occup_llc cqm_mbm_total cqm_mbm_local avx512_bf16 clzero irperf xsaveerptr rdpru wbnoinvd cppc arat npt "
    "lbrv svm_lock nrip_save tsc_scale vmcb_clean flushbyasid decodeassists pausefilter pfthreshold avic "
    "v_vmsave_vmload vgif x2avic v_spec_ctrl vnmi avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq "
    "avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid overflow_recov succor smca fsrm flush_l1d")


def cpuinfo(model: str, flags: str, processors: int = 2) -> str:
    """The text of ``/proc/cpuinfo`` as Linux lays it out: one block per logical processor."""
    return "\n".join(f"processor\t: {i}\nvendor_id\t: x\nmodel name\t: {model}\nflags\t\t: {flags}\n"
                     f"bugs\t\t: sysret_ss_attrs\nbogomips\t: 4890.81\n" for i in range(processors))


MACHINES = [("AMD EPYC", EPYC_AVX2, None), ("Intel Xeon (Sapphire Rapids)", SAPPHIRE_RAPIDS, "AMX"),
            ("AMD EPYC (Zen 4)", ZEN4, "AVX-512 BF16")]


@pytest.fixture()
def probes(monkeypatch):
    """Set torch's CPU probes: ``probes(amx, avx512_bf16)``; ``None`` removes a probe (an older torch)."""

    def set_probes(amx: bool | None, avx512_bf16: bool | None) -> None:
        for name, value in (("_is_amx_tile_supported", amx), ("_is_avx512_bf16_supported", avx512_bf16)):
            if value is None:
                monkeypatch.delattr(torch.cpu, name, raising=False)
            else:
                monkeypatch.setattr(torch.cpu, name, lambda v=value: v)
    return set_probes


@pytest.fixture()
def info_log():
    """The INFO records of ``pitvit.utils.device`` (the CLI's logging set-up stops them reaching pytest's)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("pitvit.utils.device")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize("model, flags, expected", MACHINES)
def test_cpuinfo_fallback_on_real_flag_lines(tmp_path, monkeypatch, probes, model, flags, expected):
    assert D.parse_cpu_flags(cpuinfo(model, flags)) == set(flags.split())
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo(model, flags))
    monkeypatch.setattr(D, "CPUINFO", str(path))
    probes(None, None)  # a torch without the probes: /proc/cpuinfo decides
    assert D.cpu_bf16_support() == expected
    assert D.resolve_amp("auto", "cpu") == ("none" if expected is None else "bf16")


def test_cpuinfo_absent_or_without_flags(tmp_path, monkeypatch, probes):
    probes(None, None)
    monkeypatch.setattr(D, "CPUINFO", str(tmp_path / "absent"))  # macOS, Windows: no /proc
    assert D.cpu_flags() == set() and D.cpu_bf16_support() is None
    assert D.parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == set()  # ARM's line is not x86's


@pytest.mark.parametrize("amx, avx, expected", [(True, False, "AMX"), (False, True, "AVX-512 BF16"),
                                                (True, True, "AMX"), (False, False, None)])
def test_torch_probes_win_over_cpuinfo(tmp_path, monkeypatch, probes, info_log, amx, avx, expected):
    path = tmp_path / "cpuinfo"
    path.write_text(cpuinfo("Intel Xeon (Sapphire Rapids)", SAPPHIRE_RAPIDS))
    monkeypatch.setattr(D, "CPUINFO", str(path))  # says AMX; the probes (which also ask the OS) decide
    probes(amx, avx)
    assert D.cpu_bf16_support() == expected
    assert D.resolve_amp("auto", torch.device("cpu")) == ("none" if expected is None else "bf16")
    (line,) = [r.getMessage() for r in info_log]
    assert line.startswith("precision auto on cpu: " + ("fp32" if expected is None else "bf16"))
    assert (expected or "neither AMX nor AVX-512 BF16") in line
    assert D.amp_dtype("auto") == (None if expected is None else torch.bfloat16)


def test_explicit_names_pass_and_fp16_needs_cuda(probes, info_log):
    probes(True, True)
    assert [D.resolve_amp(n, "cpu") for n in ("none", "bf16")] == ["none", "bf16"]
    assert not info_log  # only auto says what it picked
    with pytest.raises(D.ConfigError, match="fp16"):
        D.resolve_amp("fp16", "cpu")
    with pytest.raises(D.ConfigError, match="auto, none, bf16, fp16"):
        D.resolve_amp("fp8", "cpu")


@pytest.mark.parametrize("capable", [True, False])
def test_cuda_asks_for_native_bf16(monkeypatch, info_log, capable):
    asked = {}

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked["including_emulation"] = including_emulation
        return capable or including_emulation  # a pre-Ampere GPU emulates bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200" if capable else "Tesla V100")
    assert D.resolve_amp("auto", "cuda") == ("bf16" if capable else "none")
    assert asked == {"including_emulation": False}
    assert ("NVIDIA H200 computes" if capable else "Tesla V100 does not compute") in info_log[0].getMessage()


# ---------------------------------------------------------------------------- auto reaches the tools
def _head_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    return seen


@pytest.mark.parametrize("native", [True, False])
def test_predict_defaults_to_auto(tmp_path, probes, native):
    from PIL import Image

    from pitvit.models import create_model
    from pitvit.tools.predict import predict_files

    Image.new("RGB", (40, 30), (200, 30, 10)).save(tmp_path / "a.png")
    probes(native, False)
    model = create_model("pit_test")
    seen = _head_dtypes(model)
    preds, errors = predict_files(model, [tmp_path / "a.png"], topk=2)  # no amp given: auto
    assert len(preds) == 1 and not errors
    # under bf16 autocast a Linear layer computes in bf16 (torch's autocast op list)
    assert seen == [torch.bfloat16 if native else torch.float32]
    predict_files(model, [tmp_path / "a.png"], amp="none")
    assert seen[-1] == torch.float32


def test_predict_cli_says_what_auto_picked(tmp_path, probes, capsys):
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 30, 10)).save(tmp_path / "a.png")
    probes(True, True)
    assert cli(["predict", str(tmp_path / "a.png"), "--model", "pit_test", "--topk", "1"]) == 0
    assert "precision auto on cpu: bf16 (this CPU computes bf16 natively: AMX)" in capsys.readouterr().err


@pytest.mark.parametrize("native", [True, False])
def test_benchmark_defaults_to_auto(probes, capsys, native):
    probes(False, native)
    args = ["benchmark", "--model", "pit_test", "--batch", "2", "--steps", "1", "--warmup", "0", "--device", "cpu",
            "--no-train", "--format", "json"]
    assert cli(args) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["amp"] == ("bf16" if native else "none") and row["compile"] is False
    assert cli(args + ["--amp", "none"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["amp"] == "none"


def _tiny_folder(root):
    from PIL import Image

    for k in range(4):
        d = root / "val" / f"c{k % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 36), (60 * k, 100, 200 - 40 * k)).save(d / f"{k}.png")
    return root


def test_eval_keeps_fp32_by_default_and_accepts_auto(tmp_path, probes, capsys):
    from pitvit.tools.evaluate import evaluate_model

    data = _tiny_folder(tmp_path / "data")
    probes(True, True)
    r = evaluate_model("pit_test", None, data, batch_size=4, workers=0, device="cpu")
    assert r["amp"] == "none"  # published figures are fp32: eval never switches on its own
    out = tmp_path / "r.json"
    assert cli(["eval", "--model", "pit_test", "--data", str(data), "--workers", "0", "--device", "cpu",
                "--amp", "auto", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["amp"] == "bf16"
    probes(False, False)
    assert evaluate_model("pit_test", None, data, batch_size=4, workers=0, device="cpu", amp="auto")["amp"] == "none"


@pytest.mark.parametrize("native", [True, False])
def test_training_accepts_auto(probes, native):
    from pitvit.models import create_model
    from pitvit.train.recipes import load_config
    from pitvit.train.builders import build_training
    from pitvit.utils.distributed import DistInfo

    probes(native, False)
    cfg = load_config(None, ["train.amp=auto", "model.name=pit_test", "ema.enabled=false"])
    t = build_training(cfg, create_model("pit_test"), steps_per_epoch=4, info=DistInfo())
    assert t.amp_dtype == (torch.bfloat16 if native else None) and t.scaler is None
    with pytest.raises(ValueError, match="train.amp"):
        load_config(None, ["train.amp=fp8"])
