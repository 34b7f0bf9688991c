"""Weight formats: detection, exact round trips, safe reading, mismatch errors, fitting, save_pretrained, CLI.

References are independent of the code under test: Paddle files are written here by hand the way
``paddle.save`` writes them (pickled numpy arrays, Linear weights transposed), timm keys come from timm's own
model, and the position-embedding resize is checked against ``F.interpolate``.
"""
from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import pitvit
from pitvit.cli import main as cli_main
from pitvit.models import (DIGEST_KEY, DIGESTS_KEY, CheckpointError, convert_state_dict, create_model, load_weights,
                           model_from_checkpoint, read_checkpoint, read_state_dict, read_weights, save_pretrained,
                           save_weights, state_dict_digest, with_digests)


pytestmark = pytest.mark.usefixtures("one_thread")


def randomized(name: str = "pit_test", seed: int = 0, **kw) -> pitvit.PiT:
    """A model whose every tensor is random, so a swapped, transposed or skipped tensor cannot go unseen."""
    torch.manual_seed(seed)
    model = create_model(name, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def image(model: pitvit.PiT, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, model.cfg.in_chans, *model.cfg.img_size, generator=torch.Generator().manual_seed(1))


def is_linear_weight(key: str) -> bool:
    return bool(re.search(r"(attn\.qkv|attn\.proj|mlp\.fc[12]|pools\.\d+\.fc|head|head_dist)\.weight$", key))


def paddle_arrays(sd: dict) -> dict:
    """What paddle.save writes for a PaddleViT PiT: float32 arrays, Linear weights [in, out], a name table."""
    out = {k: (v.t() if is_linear_weight(k) else v).numpy().astype(np.float32) for k, v in sd.items()}
    out["StructuredToParameterName@@"] = {k: f"param_{i}" for i, k in enumerate(sd)}
    return out


def timm_keys(sd: dict, legacy: bool = False) -> dict:
    """The official state dict renamed the way timm names pools (written here, not with the code under test)."""
    shift = 0 if legacy else 1
    return {re.sub(r"^pools\.(\d+)\.", lambda m: f"transformers.{int(m.group(1)) + shift}.pool.", k): v
            for k, v in sd.items()}


@pytest.fixture
def model() -> pitvit.PiT:
    return randomized()


@pytest.fixture
def official(model, tmp_path) -> Path:
    path = tmp_path / "official.pth"
    torch.save(model.state_dict(), path)
    return path


# ------------------------------------------------------------------ round trips
def test_official_paddle_pitvit_official_round_trip_is_exact(model, official, tmp_path):
    sd = model.state_dict()
    a = create_model("pit_test")
    load_weights(a, official)
    save_weights(a, tmp_path / "a.pdparams")
    b = create_model("pit_test")
    load_weights(b, tmp_path / "a.pdparams")
    ckpt = {"format": "pitvit", "version": 1, "model_name": "pit_test", "model_cfg": b.cfg.to_dict(),
            "state_dict": b.state_dict(), "epoch": 3}
    torch.save(ckpt, tmp_path / "run.pt")
    c = model_from_checkpoint(tmp_path / "run.pt")
    save_weights(c, tmp_path / "back.pth")
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert same_tensors(back, sd)


def test_paddle_file_matches_paddle_layout(model, tmp_path):
    sd = model.state_dict()
    save_weights(model, tmp_path / "m.pdparams")
    with open(tmp_path / "m.pdparams", "rb") as f:
        arrays = pickle.load(f)  # as paddle.load reads it (the file is our own, so plain pickle is fine here)
    assert "StructuredToParameterName@@" in arrays
    arrays.pop("StructuredToParameterName@@")
    assert arrays.keys() == sd.keys()
    for k, v in sd.items():
        assert isinstance(arrays[k], np.ndarray) and arrays[k].dtype == np.float32
        expected = v.t() if is_linear_weight(k) else v
        assert np.array_equal(arrays[k], expected.numpy()), k
    # Square layers are transposed too: the key decides, not the shape.
    proj = "transformers.0.blocks.0.attn.proj.weight"
    assert sd[proj].shape[0] == sd[proj].shape[1] and not torch.equal(sd[proj], sd[proj].t())
    # Readable by numpy 1.x (where Paddle lives): numpy's reconstructor is named numpy.core, not numpy._core.
    assert b"numpy._core" not in (tmp_path / "m.pdparams").read_bytes()


@pytest.mark.parametrize("protocol", [2, 4])
def test_hand_written_paddle_file_loads(model, tmp_path, protocol):
    path = tmp_path / "Best_PiT.pdparams"
    with open(path, "wb") as f:
        pickle.dump(paddle_arrays(model.state_dict()), f, protocol=protocol)
    other = create_model("pit_test").eval()
    result = load_weights(other, path)
    assert result.weights.layout == "paddle"
    assert same_tensors(other.state_dict(), model.state_dict())
    x = image(model)
    assert torch.equal(other(x), model(x))


def test_paddlevit_training_checkpoint_with_ema(tmp_path):
    raw, ema = randomized(seed=0), randomized(seed=1)
    # paddle.save of a nested dict pickles every tensor as a (name, array) tuple.
    nested = lambda m: {k: (f"p{i}", a) for i, (k, a) in enumerate(paddle_arrays(m.state_dict()).items())
                        if not k.startswith("Structured")}
    path = tmp_path / "Epoch-10-Loss-3.1.pdparams"
    with open(path, "wb") as f:
        pickle.dump({"model": nested(raw), "model_ema": nested(ema), "epoch": 10,
                     "optimizer": {"LR_Scheduler": {"last_epoch": 10}}}, f, protocol=4)
    a, b = create_model("pit_test"), create_model("pit_test")
    load_weights(a, path)
    assert same_tensors(a.state_dict(), raw.state_dict())
    assert load_weights(b, path, ema=True).weights.ema
    assert same_tensors(b.state_dict(), ema.state_dict())


def test_in_memory_numpy_dict_is_paddle_layout(model):
    other = create_model("pit_test")
    assert load_weights(other, paddle_arrays(model.state_dict())).weights.layout == "paddle"
    assert same_tensors(other.state_dict(), model.state_dict())


@pytest.mark.parametrize("legacy", [False, True])
def test_timm_layouts_load_and_write_back(model, tmp_path, legacy):
    sd = model.state_dict()
    other = create_model("pit_test")
    result = load_weights(other, timm_keys(sd, legacy))
    assert result.weights.layout == ("timm_legacy" if legacy else "timm")
    assert same_tensors(other.state_dict(), sd)
    fmt = "timm_legacy" if legacy else "timm"
    save_weights(model, tmp_path / "t.pth", format=fmt)
    assert same_tensors(torch.load(tmp_path / "t.pth", weights_only=True), timm_keys(sd, legacy))


def test_timm_format_has_timms_own_keys(tmp_path):
    reference = timm.create_model("pit_ti_224", pretrained=False).state_dict()
    ours = create_model("pit_ti")
    save_weights(ours, tmp_path / "t.safetensors", format="timm")
    written = read_checkpoint(tmp_path / "t.safetensors")["state_dict"]
    assert {k: v.shape for k, v in written.items()} == {k: v.shape for k, v in reference.items()}


def test_safetensors_round_trip(model, tmp_path):
    save_weights(model, tmp_path / "m.safetensors")
    from safetensors.torch import load_file

    assert same_tensors(load_file(tmp_path / "m.safetensors"), model.state_dict())
    other = create_model("pit_test")
    assert load_weights(other, tmp_path / "m.safetensors").weights.container == "safetensors"
    assert same_tensors(other.state_dict(), model.state_dict())


# ------------------------------------------------------------------ detection
def test_every_format_is_detected(model, official, tmp_path):
    sd = model.state_dict()
    save_weights(model, tmp_path / "p.pdparams")
    save_weights(model, tmp_path / "s.safetensors")
    save_pretrained(model, tmp_path / "dir")
    torch.save(timm_keys(sd), tmp_path / "timm.pth")
    torch.save(timm_keys(sd, legacy=True), tmp_path / "timm06.pth")
    torch.save({"format": "pitvit", "version": 1, "model_name": "pit_test", "state_dict": sd}, tmp_path / "run.pt")
    with open(tmp_path / "renamed.bin", "wb") as f:  # a Paddle pickle without its extension
        pickle.dump(paddle_arrays(sd), f, protocol=4)
    cases = {
        official: ("torch file", "official"),
        tmp_path / "timm.pth": ("torch file", "timm"),
        tmp_path / "timm06.pth": ("torch file", "timm_legacy"),
        tmp_path / "p.pdparams": ("paddle pickle", "paddle"),
        tmp_path / "renamed.bin": ("paddle pickle", "paddle"),
        tmp_path / "s.safetensors": ("safetensors", "official"),
        tmp_path / "dir": ("save_pretrained directory", "official"),
        tmp_path / "run.pt": ("pitvit checkpoint", "official"),
    }
    for path, (container, layout) in cases.items():
        w = read_weights(path)
        assert (w.container, w.layout) == (container, layout), path
        assert same_tensors(w.state_dict, sd), path
        assert w.info["variant"] == "pit_test"


@pytest.mark.parametrize("wrap", ["model", "state_dict", "module", "compiled"])
def test_wrapped_state_dicts(model, wrap):
    sd = model.state_dict()
    wrapped = {
        "model": {"model": sd, "epoch": 1},
        "state_dict": {"state_dict": sd, "arch": "pit_test"},
        "module": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "compiled": {f"_orig_mod.{k}": v for k, v in sd.items()},
    }[wrap]
    other = create_model("pit_test")
    load_weights(other, wrapped)
    assert same_tensors(other.state_dict(), sd)


def test_timm_and_deit_training_checkpoints(model, tmp_path):
    raw, ema = model.state_dict(), randomized(seed=1).state_dict()
    args = argparse.Namespace(model="pit_test", lr=5e-4)
    torch.save({"epoch": 9, "arch": "pit_test", "args": args, "state_dict": timm_keys(raw),
                "state_dict_ema": timm_keys(ema)}, tmp_path / "timm_train.pth.tar")
    torch.save({"model": raw, "model_ema": ema, "epoch": 9, "args": args}, tmp_path / "deit.pth")
    for path in (tmp_path / "timm_train.pth.tar", tmp_path / "deit.pth"):
        assert same_tensors(read_weights(path).state_dict, raw)
        assert same_tensors(read_weights(path, ema=True).state_dict, ema)


def test_pitvit_checkpoint_ema_flag(tmp_path):
    raw, ema = randomized(seed=0), randomized(seed=1)
    ckpt = {"format": "pitvit", "version": 1, "model_name": "pit_test", "model_cfg": raw.cfg.to_dict(),
            "class_names": [f"c{i}" for i in range(10)], "state_dict": raw.state_dict(),
            "ema_state_dict": ema.state_dict(), "epoch": 5, "optimizer": {"state": {}, "param_groups": []}}
    torch.save(ckpt, tmp_path / "last.pt")
    assert read_checkpoint(tmp_path / "last.pt")["epoch"] == 5
    m = model_from_checkpoint(tmp_path / "last.pt", ema=True)
    assert same_tensors(m.state_dict(), ema.state_dict())
    assert m.class_names == ckpt["class_names"] and m.model_name == "pit_test"
    with pytest.raises(CheckpointError, match="no EMA"):
        load_weights(create_model("pit_test"), raw.state_dict(), ema=True)


# ------------------------------------------------------------------ safety
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("suffix", [".pdparams", ".bin", ".pth"])
def test_crafted_pickle_is_refused_without_running(model, tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    payload = dict(paddle_arrays(model.state_dict()), evil=_Payload(marker))
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=2 if suffix == ".pth" else 4)
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("pit_test"), path)
    assert not marker.exists()
    if suffix != ".pth":
        assert "wants to import" in str(err.value) and "system" in str(err.value)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)
    assert not marker.exists()


def test_torch_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"pos_embed": torch.zeros(1), "x": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


# ------------------------------------------------------------------ mismatches
def test_wrong_variant_names_what_it_looks_like(tmp_path):
    torch.save(create_model("pit_ti_distilled").state_dict(), tmp_path / "d.pth")
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("pit_ti"), tmp_path / "d.pth")
    msg = str(err.value)
    assert "looks like pit_ti_distilled" in msg and "distilled" in msg
    assert "unexpected keys" in msg and "head_dist.weight" in msg and "cls_token (1, 2, 64)" in msg


def test_other_architecture_is_named(official):
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("pit_xs"), official)
    msg = str(err.value)
    assert "looks like pit_test (widths 16/32/64, depth 1/1/1" in msg
    assert "missing keys" in msg and "mis-shaped keys" in msg and len(msg) < 2000


@pytest.mark.parametrize("suffix", [".pth", ".pdparams", ".safetensors"])
def test_truncated_file(model, tmp_path, suffix):
    path = tmp_path / f"m{suffix}"
    save_weights(model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_weights(create_model("pit_test"), path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="not a"):
        load_weights(create_model("pit_test"), tmp_path / "notes.pth")
    torch.save(torch.nn.Linear(3, 4).state_dict(), tmp_path / "linear.pth")
    with pytest.raises(CheckpointError, match="not a PiT checkpoint"):
        load_weights(create_model("pit_test"), tmp_path / "linear.pth")
    with pytest.raises(FileNotFoundError):
        load_weights(create_model("pit_test"), tmp_path / "absent.pth")


def test_in_chans_mismatch_is_clear(official):
    with pytest.raises(CheckpointError, match="in_chans=3"):
        load_weights(create_model("pit_test", in_chans=1), official)


def test_non_strict_reports_what_it_skipped(model):
    sd = dict(model.state_dict())
    del sd["norm.weight"]
    sd["extra"] = torch.zeros(1)
    other = create_model("pit_test")
    result = load_weights(other, sd, strict=False)
    assert result.missing == ["norm.weight"] and result.unexpected == ["extra"]
    assert torch.equal(other.head.weight, model.head.weight)


# ------------------------------------------------------------------ fitting
def test_head_dropped_with_warning(model, official):
    other = create_model("pit_test", num_classes=3)
    fresh = other.head.weight.detach().clone()
    with pytest.warns(UserWarning, match="10 classes, the model 3"):
        result = load_weights(other, official)
    assert torch.equal(other.head.weight, fresh) and other.head.weight.shape == (3, 64)
    assert torch.equal(other.norm.weight, model.norm.weight)
    assert any("head" in n for n in result.notes)


def test_distilled_heads_dropped_together(tmp_path):
    src = randomized("pit_ti_distilled")
    torch.save(src.state_dict(), tmp_path / "d.pth")
    with pytest.warns(UserWarning, match="head"):
        m = create_model("pit_ti_distilled", num_classes=5, weights=tmp_path / "d.pth")
    assert m.head_dist.weight.shape == (5, 256)
    assert torch.equal(m.cls_token, src.cls_token)


def test_pos_embed_resized_on_load(tmp_path):
    src = randomized("pit_ti")
    torch.save(src.state_dict(), tmp_path / "pit_ti_224.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no head warning: only the input size differs
        big = create_model("pit_ti", img_size=288, weights=tmp_path / "pit_ti_224.pth").eval()
    expected = F.interpolate(src.pos_embed.detach(), size=(35, 35), mode="bicubic", align_corners=False)
    assert big.pos_embed.shape == (1, 64, 35, 35)
    assert torch.allclose(big.pos_embed, expected)
    assert torch.isfinite(big(torch.randn(1, 3, 288, 288))).all()
    same = create_model("pit_ti", weights=tmp_path / "pit_ti_224.pth").eval()
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(same(x), src(x))


# ------------------------------------------------------------------ save_pretrained
def test_save_pretrained_directory(tmp_path):
    src = randomized("pit_test", num_classes=4)
    src.class_names = ["ant", "bee", "cat", "dog"]
    save_pretrained(src, tmp_path / "exported")
    assert {p.name for p in (tmp_path / "exported").iterdir()} == {"config.json", "model.safetensors"}
    m = model_from_checkpoint(tmp_path / "exported").eval()
    assert m.num_classes == 4 and m.class_names == src.class_names and m.model_name == "pit_test"
    x = image(m)
    assert torch.equal(m(x), src(x))
    m2 = create_model("pit_test", num_classes=4, weights=tmp_path / "exported").eval()
    assert torch.equal(m2(x), src(x))


def test_model_from_foreign_checkpoint_needs_a_name(model, tmp_path):
    save_weights(model, tmp_path / "p.pdparams")
    with pytest.raises(CheckpointError, match="model='pit_test'"):
        model_from_checkpoint(tmp_path / "p.pdparams")
    m = model_from_checkpoint(tmp_path / "p.pdparams", model="pit_test")
    assert same_tensors(m.state_dict(), model.state_dict())


def test_convert_state_dict_rejects_unknown_layout(model):
    with pytest.raises(ValueError, match="unknown layout"):
        convert_state_dict(model.state_dict(), "caffe")


# ------------------------------------------------------------------ CLI
def test_cli_convert(model, official, tmp_path, capsys):
    assert cli_main(["convert", str(official), str(tmp_path / "m.pdparams"), "--model", "pit_test"]) == 0
    assert cli_main(["convert", str(tmp_path / "m.pdparams"), str(tmp_path / "out"), "--model", "pit_test"]) == 0
    assert cli_main(["convert", str(tmp_path / "out"), str(tmp_path / "t.bin"), "--format", "timm"]) == 0
    out = capsys.readouterr().out
    assert "paddle pickle" in out and "pretrained format" in out and "timm format" in out
    assert same_tensors(torch.load(tmp_path / "t.bin", weights_only=True), timm_keys(model.state_dict()))
    assert cli_main(["convert", str(tmp_path / "m.pdparams"), str(tmp_path / "x.pth")]) == 4  # CheckpointError
    assert "--model pit_test" in capsys.readouterr().err


# ------------------------------------------------------------------ one safe reader for any weights file
def test_read_state_dict_reads_any_model_and_unwraps(tmp_path):
    # Not a PiT: a teacher's or anyone's weights, in the wrappers training scripts use.
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    sd = net.state_dict()
    torch.save({"model_state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}, "epoch": 2},
               tmp_path / "plain.pth")
    assert same_tensors(read_state_dict(tmp_path / "plain.pth"), sd)
    ema = {k: v + 1 for k, v in sd.items() if v.is_floating_point()}
    torch.save({"model": sd, "model_ema": ema}, tmp_path / "deit.pth")
    assert same_tensors(read_state_dict(tmp_path / "deit.pth", ema=True), ema)
    with pytest.raises(CheckpointError, match="no EMA"):
        read_state_dict(tmp_path / "plain.pth", ema=True)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth"):
        read_state_dict(tmp_path / "empty.pth")


def test_read_state_dict_runs_no_code(model, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": model.state_dict(), "x": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


def test_training_checkpoints_load_through_the_same_reader(model, tmp_path):
    from pitvit.train.checkpoint import read_run_checkpoint

    save_weights(model, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match=r"bare\.pth: not a pitvit training checkpoint"):
        read_run_checkpoint(tmp_path / "bare.pth")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "bare.pth").read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"cut\.pt: not a readable PyTorch file"):
        read_run_checkpoint(tmp_path / "cut.pt")


def test_load_result_prints_a_summary_not_the_tensors(model):
    result = load_weights(create_model("pit_test"), model.state_dict())
    text = repr(result)
    assert text.startswith("LoadResult(Weights('<dict>': dict, official layout, ") and len(text) < 200


# ------------------------------------------------------------------ content hashes
def flip_one_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_bit_flipped_safetensors_file_is_refused(model, tmp_path):
    path = tmp_path / "m.safetensors"
    save_weights(model, path)
    assert read_checkpoint(path)["safetensors_metadata"][DIGEST_KEY] == state_dict_digest(model.state_dict())
    flip_one_byte(path, path.stat().st_size - 7)  # inside the last tensor's data
    with pytest.raises(CheckpointError, match=r"m\.safetensors: the tensors do not match the SHA-256"):
        load_weights(create_model("pit_test"), path)
    # Without the hash the flip goes unseen: the file is still well-formed.
    from safetensors.torch import load_file, save_file

    save_file(load_file(path), tmp_path / "no_hash.safetensors")
    flipped = read_state_dict(tmp_path / "no_hash.safetensors")
    assert not same_tensors(flipped, model.state_dict())


def test_bit_flipped_training_checkpoint_is_refused(model, tmp_path):
    import zipfile

    from pitvit.train.checkpoint import read_run_checkpoint

    ckpt = with_digests({"format": "pitvit", "version": 1, "model_name": "pit_test",
                         "state_dict": model.state_dict(), "epoch": 1})
    assert set(ckpt[DIGESTS_KEY]) == {"state_dict"}
    torch.save(ckpt, tmp_path / "last.pt")
    assert read_run_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    # torch.load itself checks nothing: flip a byte inside the largest tensor record of the zip.
    with zipfile.ZipFile(tmp_path / "last.pt") as z:
        record = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    header = (tmp_path / "last.pt").read_bytes()[record.header_offset:record.header_offset + 30]
    start = record.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    flip_one_byte(tmp_path / "last.pt", start + record.file_size // 2)
    torch.load(tmp_path / "last.pt", weights_only=True)  # loads without complaint
    with pytest.raises(CheckpointError, match=r"last\.pt: the tensors of 'state_dict' do not match the SHA-256"):
        read_run_checkpoint(tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="SHA-256"):
        model_from_checkpoint(tmp_path / "last.pt")


def test_digest_is_of_the_tensors_not_their_memory():
    # Hand-built: the same numbers in another memory layout or device give the same digest; one value differs.
    a = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.zeros(3)}
    b = {"b": torch.zeros(3), "w": torch.arange(6.0).reshape(2, 3).t().contiguous().t()}
    assert not b["w"].is_contiguous() and state_dict_digest(a) == state_dict_digest(b)
    assert state_dict_digest({**a, "b": torch.tensor([0.0, 0.0, 1e-30])}) != state_dict_digest(a)
    assert state_dict_digest({**a, "b": torch.zeros(3, dtype=torch.float64)}) != state_dict_digest(a)
