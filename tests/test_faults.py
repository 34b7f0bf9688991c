"""Faults and bad input, met through the command line as a user meets them.

For every bad input: the exit code of pitvit's error table (``pitvit --help``: 2 option or value, 3 dataset,
4 checkpoint, 5 training, 6 output), one line that names the problem and what to do, and every input and
earlier output unchanged (each file hashed before and after). Runs interrupted by SIGTERM or SIGKILL, with 0,
1 or 2 loader workers, end with exactly the weights of an uninterrupted run.

References: the exit-code table; files read back with ``torch.load`` and ``hashlib``; faults made by hand (an
empty, a truncated and a bit-flipped checkpoint, a pickle that would run a command, a file where a folder
should be, a read-only folder, a per-process file-size limit (``RLIMIT_FSIZE``) or a small tmpfs standing in
for a full disk); an uninterrupted run for the interrupted ones.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pitvit.cli import main as cli

pytestmark = pytest.mark.usefixtures("one_thread")

# A short, fast run of the tiny test variant; a later --set of the same key wins.
COMMON = ["model.name=pit_test", "data.batch_size=16", "data.num_workers=0", "train.amp=none", "train.device=cpu",
          "optim.lr=2e-3", "optim.lr_base_batch=0", "sched.warmup_epochs=1", "sched.stepping=step",
          "log.plot=false", "train.threads=1", "ema.decay=0.9", "train.epochs=2"]


def _sets(*items: str) -> list[str]:
    return [x for s in (*COMMON, *items) for x in ("--set", s)]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _images(root: Path, per_class: int, classes: int = 4, val: int = 8) -> Path:
    """32 px PNGs, class c brightens columns 8c..8c+8 (learnable, so the weights move)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (rng.random((32, 32, 3)) * 80).astype(np.uint8)
                a[:, 8 * c:8 * c + 8] += 150
                Image.fromarray(a).save(folder / f"{i}.png")
    return root


def _hashes(*paths: Path) -> dict[str, str]:
    """SHA-256 of every file at or under ``paths`` (a missing path contributes nothing)."""
    out = {}
    for p in paths:
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        out.update({str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files})
    return out


def _one_line(err: str, command: str) -> str:
    """The error line of a failed command: the last line, the only one saying error, no traceback."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith(f"pitvit {command}: error: "), err[-2000:]
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[-1]


def _refused(capsys, argv: list[str], code: int, words: list[str], unchanged: list[Path]) -> str:
    """Run ``pitvit ARGV`` in this process; check the code, the one line, its words and the unchanged files."""
    before = _hashes(*unchanged)
    assert before or not unchanged, "nothing to compare"
    assert cli(argv) == code
    captured = capsys.readouterr()
    line = _one_line(captured.err, argv[0])
    for w in words:
        assert w in line, (w, line)
    assert _hashes(*unchanged) == before
    return line + "\n" + captured.out


def _last(run: Path) -> dict:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


# ---------------------------------------------------------------------------- the workspace
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Images (4 and 3 classes), a finished 2-epoch run, and damaged copies of it."""
    root = tmp_path_factory.mktemp("faults")
    _images(root / "data", 24)
    _images(root / "data3", 8, classes=3, val=4)
    assert cli(["train", "--data", str(root / "data"), "--output", str(root / "run"), *_sets()]) == 0
    (root / "afile").write_text("a file, not a folder")
    good = (root / "run" / "last.pt").read_bytes()
    for name, content in (("empty", b""), ("truncated", good[: len(good) // 2])):
        shutil.copytree(root / "run", root / name)
        (root / name / "last.pt").write_bytes(content)

    class RunsACommand:  # what a hostile checkpoint holds: unpickling it would run `touch PWNED`
        def __reduce__(self):
            return (os.system, (f"touch {root / 'PWNED'}",))

    shutil.copytree(root / "run", root / "crafted")
    torch.save({"format": "pitvit", "state_dict": RunsACommand()}, root / "crafted" / "last.pt")
    torch.save({"conv1.weight": RunsACommand()}, root / "crafted_teacher.pth")
    (root / "truncated_teacher.pth").write_bytes(good[:1000])
    # A flipped bit in the weights: the stored SHA-256 no longer matches them.
    shutil.copytree(root / "run", root / "flipped")
    ckpt = _last(root / "run")
    ckpt["state_dict"]["head.weight"].view(torch.int32)[0, 0] ^= 1 << 20
    torch.save(ckpt, root / "flipped" / "last.pt")
    torch.save(ckpt, root / "flipped" / "best.pt")
    # Stopped in the middle of epoch 2, after 3 of its 6 batches of 16 (as SIGTERM leaves it).
    shutil.copytree(root / "run", root / "mid")
    ckpt = _last(root / "run")
    ckpt.update(epoch=1, step_in_epoch=3, partial_epoch={"loss_sum": 4.0, "batches": 3, "images": 48})
    ckpt["sampler"].update(epoch=1, step=3)
    torch.save(ckpt, root / "mid" / "last.pt")
    return root


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder this process cannot write: permissions for a user; for root (whom permissions do not stop) a
    read-only tmpfs mounted there, else skipped."""
    d = tmp_path / "read_only"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("root without the right to mount: no folder is read-only to this process")
    yield d
    subprocess.run(["umount", str(d)], check=True)


# ---------------------------------------------------------------------------- the battery
# (id, argv, exit code, words the line must hold). {w} is the workspace, {new} a folder that must stay absent.
_DIST = ["model.arch={distilled: true}", "distill.mode=hard", "distill.teacher=test_resnet"]
CASES = [
    # TrainingError, 5: a run folder holding another run, or a resume that cannot be exact
    ("another model", ["train", "--data", "{w}/data", "--output", "{w}/run", *_sets("model.name=pit_nano")], 5,
     ["{w}/run/last.pt belongs to another run", "'pit_nano'", "--config {w}/run/config.yaml", "--output",
      "train.resume=false"]),
    ("other classes", ["train", "--data", "{w}/data3", "--output", "{w}/run", *_sets()], 5,
     ["another run", "4 classes (c0, c1, c2, c3), this run 3"]),
    ("finished run, other settings", ["train", "--data", "{w}/data", "--output", "{w}/run",
                                      *_sets("optim.lr=5e-3")], 5,
     ["finished its 2 epochs with other settings (optim.lr: 0.002 -> 0.005)", "raise train.epochs", "--output"]),
    ("mid-epoch, other global batch", ["train", "--data", "{w}/data", "--output", "{w}/mid",
                                       *_sets("data.batch_size=8")], 5,
     ["middle of epoch 2, after batch 3", "global batch 16 -> 8", "train.resume=false"]),
    # CheckpointError, 4: the run folder's last.pt, or the teacher's weights
    ("empty last.pt", ["train", "--data", "{w}/data", "--output", "{w}/empty", *_sets()], 4,
     ["{w}/empty/last.pt: not a checkpoint", "--set train.resume=false", "another folder (--output)"]),
    ("truncated last.pt", ["train", "--data", "{w}/data", "--output", "{w}/truncated", *_sets()], 4,
     ["{w}/truncated/last.pt", "truncated", "--set train.resume=false", "(--output)"]),
    ("crafted last.pt", ["train", "--data", "{w}/data", "--output", "{w}/crafted", *_sets()], 4,
     ["{w}/crafted/last.pt: refused", "--set train.resume=false", "(--output)"]),
    ("bit-flipped last.pt", ["train", "--data", "{w}/data", "--output", "{w}/flipped", *_sets()], 4,
     ["{w}/flipped/last.pt", "SHA-256", "damaged", "--set train.resume=false"]),
    ("bit-flipped best.pt", ["eval", "--weights", "{w}/flipped/best.pt", "--data", "{w}/data", "--workers", "0"], 4,
     ["{w}/flipped/best.pt", "SHA-256", "damaged", "use an intact copy"]),
    ("crafted teacher weights", ["train", "--data", "{w}/data", "--output", "{new}",
                                 *_sets(*_DIST, "distill.teacher_weights={w}/crafted_teacher.pth")], 4,
     ["{w}/crafted_teacher.pth", "refused"]),
    ("truncated teacher weights", ["train", "--data", "{w}/data", "--output", "{new}",
                                   *_sets(*_DIST, "distill.teacher_weights={w}/truncated_teacher.pth")], 4,
     ["{w}/truncated_teacher.pth", "truncated"]),
    ("teacher weights of another model", ["train", "--data", "{w}/data", "--output", "{new}",
                                          *_sets(*_DIST, "distill.teacher_weights={w}/run/last.pt")], 4,
     ["distill.teacher_weights: {w}/run/last.pt does not hold test_resnet's weights"]),
    # ConfigError, 2: options, values, names and paths
    ("missing teacher weights", ["train", "--data", "{w}/data", "--output", "{new}",
                                 *_sets(*_DIST, "distill.teacher_weights={w}/none.pth")], 2,
     ["distill.teacher_weights: {w}/none.pth does not exist"]),
    ("unknown teacher", ["train", "--data", "{w}/data", "--output", "{new}",
                         *_sets(*_DIST, "distill.teacher=nope")], 2, ["distill.teacher 'nope' is neither"]),
    ("teacher of other classes", ["train", "--data", "{w}/data3", "--output", "{new}",
                                  *_sets(*_DIST, "distill.teacher={w}/run/best.pt")], 2,
     ["predicts 4 classes, the student 3"]),
    ("distillation without a distillation token", ["train", "--data", "{w}/data", "--output", "{new}",
                                                   *_sets("distill.mode=hard", "distill.teacher=test_resnet")], 2,
     ["distill.mode=hard needs a distilled model", "pit_test"]),
    ("train.amp=xx", ["train", "--data", "{w}/data", "--output", "{new}", *_sets("train.amp=xx")], 2,
     ["train.amp='xx' is not allowed: it must be one of auto, fp32, bf16, fp16, none"]),
    ("train.device=tpu", ["train", "--data", "{w}/data", "--output", "{new}", *_sets("train.device=tpu")], 2,
     ["train.device='tpu' is not allowed: it must be one of auto, cpu, cuda"]),
    ("negative lr", ["train", "--data", "{w}/data", "--output", "{new}", *_sets("optim.lr=-1")], 2,
     ["optim.lr=-1.0 is not allowed: it must be >= 0"]),
    ("drop path 1.5", ["train", "--data", "{w}/data", "--output", "{new}", *_sets("model.drop_path=1.5")], 2,
     ["model.drop_path=1.5 is not allowed: it must be in [0, 1)"]),
    ("unknown arch key", ["train", "--data", "{w}/data", "--output", "{new}", *_sets("model.arch={foo: 1}")], 2,
     ["model.arch {'foo': 1}", "unknown option(s) ['foo']", "depth"]),
    ("missing model.weights", ["train", "--data", "{w}/data", "--output", "{new}",
                               *_sets("model.weights={w}/none.pth")], 2, ["no checkpoint at {w}/none.pth"]),
    ("unknown auto_augment", ["train", "--data", "{w}/data", "--output", "{new}",
                              *_sets("aug.auto_augment=garbage")], 2, ["auto_augment 'garbage' is not a policy"]),
    ("unknown interpolation", ["train", "--data", "{w}/data", "--output", "{new}",
                               *_sets("data.interpolation=nope")], 2, ["data.interpolation='nope' is not allowed: it must be one of bicubic, bilinear"]),
    ("unknown erasing mode", ["train", "--data", "{w}/data", "--output", "{new}", *_sets("aug.re_mode=x")], 2,
     ["aug.re_mode='x' is not allowed: it must be one of const, rand, pixel"]),
    ("one-number crop ratio", ["train", "--data", "{w}/data", "--output", "{new}", *_sets("aug.ratio=[1]")], 2,
     ["aug.ratio=[1.0] is not allowed: it must be a list of 2 values, each > 0"]),
    ("zero std", ["train", "--data", "{w}/data", "--output", "{new}", *_sets("data.std=[0,0,0]")], 2,
     ["data.std=[0.0, 0.0, 0.0] is not allowed: it must be a list of 1 or 3 values, each > 0"]),
    ("input smaller than a patch", ["train", "--data", "{w}/data", "--output", "{new}",
                                    *_sets("data.input_size=3")], 2, ["data.input_size=3 is not allowed: it must be >= 4 (the patch of pit_test)"]),
    ("negative workers", ["eval", "--weights", "{w}/run/last.pt", "--data", "{w}/data", "--workers", "-1"], 2,
     ["loader workers must be >= 0"]),
    ("an opset torch cannot export", ["export", "--weights", "{w}/run/last.pt", "--opset", "99", "--out",
                                      "{new}/m.onnx"], 2, ["--opset 99", "the default, 17"]),
    ("eval without --data", ["eval", "--weights", "{w}/run/last.pt", "--workers", "0"], 2,
     ["no --data", "Fashion-MNIST", "10 classes", "pit_test's 4 outputs", "--data DIR"]),
    ("convert a missing file", ["convert", "{w}/none.pth", "{new}/x.safetensors", "--model", "pit_test"], 2,
     ["no checkpoint at {w}/none.pth"]),
    ("convert X X", ["convert", "{w}/run/last.pt", "{w}/run/last.pt"], 2, ["the destination is the source"]),
    ("convert to an unknown extension", ["convert", "{w}/run/last.pt", "{new}/x.xyz"], 2,
     ["cannot tell the format of {new}/x.xyz"]),
    # DatasetError, 3
    ("no dataset there", ["train", "--data", "{w}/nodata", "--output", "{new}", *_sets()], 3,
     ["cannot tell which dataset is at {w}/nodata", "does not exist", "imagefolder"]),
    # OutputError, 6: a path under a file
    ("train output under a file", ["train", "--data", "{w}/data", "--output", "{w}/afile/run", *_sets()], 6,
     ["cannot create the folder {w}/afile/run: {w}/afile is a file, not a folder"]),
    ("eval --out under a file", ["eval", "--weights", "{w}/run/last.pt", "--data", "{w}/data", "--workers", "0",
                                 "--out", "{w}/afile/r.json"], 6,
     ["cannot write {w}/afile/r.json: {w}/afile is a file, not a folder"]),
    ("export under a file", ["export", "--weights", "{w}/run/last.pt", "--out", "{w}/afile/m.onnx"], 6,
     ["cannot write {w}/afile/m.onnx: {w}/afile is a file"]),
    ("convert under a file", ["convert", "{w}/run/last.pt", "{w}/afile/x/"], 6,
     ["{w}/afile is a file, not a folder"]),
]


@pytest.mark.parametrize("argv,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(ws, tmp_path, capsys, argv, code, words):
    new = tmp_path / "new"
    fill = lambda s: s.replace("{w}", str(ws)).replace("{new}", str(new))  # noqa: E731
    out = _refused(capsys, [fill(a) for a in argv], code, [fill(w) for w in words], [ws])
    assert not new.exists()  # a command that fails makes no folder
    assert not (ws / "PWNED").exists()  # and runs nothing from a file
    if argv[0] == "eval" and code == 6:
        assert "top-1" in out  # the result was printed before --out failed: nothing is lost


@pytest.mark.parametrize("argv", [["train", "--data", "{w}/data", "--output", "{ro}/run", *_sets()],
                                  ["eval", "--weights", "{w}/run/last.pt", "--data", "{w}/data", "--workers", "0",
                                   "--out", "{ro}/r.json"],
                                  ["convert", "{w}/run/last.pt", "{ro}/x.safetensors"]],
                         ids=["train", "eval", "convert"])
def test_read_only_output_is_one_line(ws, read_only_dir, capsys, argv):
    argv = [a.replace("{w}", str(ws)).replace("{ro}", str(read_only_dir)) for a in argv]
    line = _refused(capsys, argv, 6, ["cannot ", str(read_only_dir)], [ws])
    assert "read-only file system" in line or "permission denied" in line
    assert not any(read_only_dir.iterdir())


def test_a_new_global_batch_at_an_epoch_boundary_is_a_warning(ws, tmp_path, capsys):
    """The run's 2 epochs, then a third at batch 8: allowed between epochs, and said."""
    run = tmp_path / "run"
    shutil.copytree(ws / "run", run)
    assert cli(["train", "--data", str(ws / "data"), "--output", str(run),
                *_sets("data.batch_size=8", "train.epochs=3")]) == 0
    assert "the batches change at this epoch boundary (global batch 16 -> 8)" in (run / "log.txt").read_text()
    assert _last(run)["epoch"] == 3


# ---------------------------------------------------------------------------- a full disk
# One process runs several commands under a file-size limit (RLIMIT_FSIZE): a write past it fails with EFBIG,
# as one past a full disk fails with ENOSPC. Each pitvit-written file of pit_test is larger than the limit.
_UNDER_LIMIT = r'''
import json, resource, sys
from pitvit.cli import main
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
for argv in json.loads(sys.argv[2]):
    code = main(argv)
    print(json.dumps({"argv": argv, "code": code}), flush=True)
'''


def test_a_full_disk_leaves_no_partial_file(ws, tmp_path):
    """convert (every format) and export (ONNX, then .pt2, whose writer used to abort the process, exit 134)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.pth").write_bytes(b"an earlier output")
    last = str(ws / "run" / "last.pt")
    commands = [["convert", last, str(out / name)] for name in ("x.pth", "x.safetensors", "x.pdparams", "x_dir")]
    commands += [["convert", last, str(out / "kept.pth")]]
    commands += [["export", "--weights", last, "--format", fmt, "--out", str(out / f"m.{fmt}")]
                 for fmt in ("onnx", "pt2")]
    script = tmp_path / "under_limit.py"
    script.write_text(_UNDER_LIMIT)
    r = subprocess.run([sys.executable, str(script), str(100_000), json.dumps(commands)], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    done = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["code"] for d in done] == [6] * len(commands)
    errors = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert len(errors) == len(commands) and "Traceback" not in r.stderr, r.stderr[-3000:]
    for argv, line in zip(commands, errors):
        target = argv[-1] if argv[0] == "export" or "." in Path(argv[-1]).name else argv[-1] + "/model.safetensors"
        assert f"cannot write {target}: the file is larger than this file system or process allows" in line
    assert _hashes(out) == {str(out / "kept.pth"): hashlib.sha256(b"an earlier output").hexdigest()}
    assert sorted(p.name for p in out.iterdir()) == ["kept.pth"]  # no partial file, no temporary, no folder


def test_a_full_disk_during_training_stops_with_the_checkpoint_intact(ws, tmp_path):
    """A third epoch whose checkpoint (1.3 MB) does not fit under a 1 MB limit: exit 6, one line, and last.pt
    and best.pt still hold epoch 2; the same command with room continues from there."""
    run = tmp_path / "run"
    shutil.copytree(ws / "run", run)
    before = _hashes(run / "last.pt", run / "best.pt")
    argv = ["train", "--data", str(ws / "data"), "--output", str(run), *_sets("train.epochs=3")]
    script = tmp_path / "under_limit.py"
    script.write_text(_UNDER_LIMIT)
    r = subprocess.run([sys.executable, str(script), str(1_000_000), json.dumps([argv])], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert json.loads(r.stdout)["code"] == 6, r.stderr[-3000:]
    line = _one_line(r.stderr, "train")
    for w in (f"cannot write {run}/last.pt", "larger than", "training stopped", f"{run}/last.pt (epoch 2)",
              "run the same command to resume"):
        assert w in line, (w, line)
    assert _hashes(run / "last.pt", run / "best.pt") == before and not _temps(run)
    assert cli(argv) == 0 and _last(run)["epoch"] == 3


@pytest.fixture
def small_tmpfs(tmp_path):
    """``mount(kb)``: a tmpfs of that size at a new folder (root only; unmounted afterwards)."""
    mounted = []

    def mount(kb: int) -> Path:
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kb}k", "tmpfs", str(d)],
                                               capture_output=True).returncode:
            pytest.skip("mounting a small tmpfs needs root and the right to mount")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], check=True)


@pytest.mark.slow  # not slow, but it mounts file systems: kept out of the default run
def test_a_really_full_disk(ws, small_tmpfs):
    """ENOSPC from a full tmpfs: the .pt2 export (which aborted the process) and a training checkpoint."""
    disk = small_tmpfs(256)
    argv = ["export", "--weights", str(ws / "run" / "last.pt"), "--format", "pt2", "--out", str(disk / "m.pt2")]
    r = subprocess.run([sys.executable, "-m", "pitvit", *argv], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 6, r.stderr[-3000:]
    assert f"cannot write {disk}/m.pt2: no space left on the device" in _one_line(r.stderr, "export")
    assert not any(disk.iterdir())
    disk = small_tmpfs(3300)  # the run's last.pt and best.pt (1.3 MB each), not a third checkpoint
    shutil.copytree(ws / "run", disk / "run")
    before = _hashes(disk / "run" / "last.pt", disk / "run" / "best.pt")
    argv = ["train", "--data", str(ws / "data"), "--output", str(disk / "run"), *_sets("train.epochs=3")]
    r = subprocess.run([sys.executable, "-m", "pitvit", *argv], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 6, r.stderr[-3000:]
    line = _one_line(r.stderr, "train")
    assert f"cannot write {disk}/run/last.pt: no space left on the device" in line and "(epoch 2)" in line
    assert _hashes(disk / "run" / "last.pt", disk / "run" / "best.pt") == before and not _temps(disk)


# ---------------------------------------------------------------------------- good checkpoints
def _toy_fit(tmp_path, monkeypatch, hurt):
    """fit() on separable tensors; ``hurt(model, epoch)`` runs after each epoch's training steps."""
    from pitvit.train import load_config
    from pitvit.train import runner

    class Toy(torch.utils.data.Dataset):
        classes = ["a", "b", "c", "d"]

        def __len__(self):
            return 64

        def __getitem__(self, i):
            x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 0.5
            x[:, 8 * (i % 4):8 * (i % 4) + 8] += 2.0
            return x, i % 4

    real = runner.train_one_epoch

    def train_then_hurt(step, loader, *, epoch, **kw):
        out = real(step, loader, epoch=epoch, **kw)
        hurt(step.model, epoch)
        return out

    monkeypatch.setattr(runner, "train_one_epoch", train_then_hurt)
    cfg = load_config(None, [*COMMON, "train.epochs=4", "ema.enabled=false", f"train.output={tmp_path / 'run'}"])
    return lambda: runner.fit(cfg, datasets=(Toy(), Toy()))


def test_weights_gone_non_finite_are_not_saved(tmp_path, monkeypatch):
    """The last step of epoch 2 makes a weight infinite (its loss was finite): the run stops without writing
    epoch 2, and last.pt and best.pt still hold epoch 1, which the message names."""
    from pitvit.utils.errors import TrainingError

    def hurt(model, epoch):
        if epoch == 1:
            with torch.no_grad():
                model.head.weight[0, 0] = float("inf")

    fit = _toy_fit(tmp_path, monkeypatch, hurt)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"weights became non-finite in epoch 2 .* the last good checkpoint is "
                                            + str(run / "last.pt") + r" \(epoch 1\)"):
        fit()
    assert _last(run)["epoch"] == 1
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1


def test_a_non_finite_validation_loss_is_not_a_good_checkpoint(tmp_path, monkeypatch):
    """After epoch 2 the head's weights are finite but so large (3e38) that every logit overflows: its
    validation loss is NaN, so best.pt stays at epoch 1 and, when the next step's loss is NaN, the message
    names best.pt, not the last.pt of epoch 2."""
    from pitvit.utils.errors import TrainingError

    def hurt(model, epoch):
        if epoch == 1:
            with torch.no_grad():
                model.head.weight.fill_(3e38)

    fit = _toy_fit(tmp_path, monkeypatch, hurt)
    run = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"non-finite loss .* at epoch 3, step 1: stopping; the last good "
                                            r"checkpoint is " + str(run / "best.pt") + r" \(epoch 1\)"):
        fit()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["epoch"] == 2 and not np.isfinite(rows[1]["val_loss"])
    assert _last(run)["epoch"] == 2  # kept for inspection and resuming; finite weights
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1
    assert "epoch 2: the validation loss is not finite" in (run / "log.txt").read_text()


_WORKERS = r'''
import sys, torch
from pitvit.data import build_loader

class Zeros(torch.utils.data.Dataset):
    classes = ["a"]
    def __len__(self):
        return 64
    def __getitem__(self, i):
        return torch.zeros(3, 4, 4), 0

loader = build_loader(Zeros(), batch_size=8, train=True, seed=0, num_workers=2)  # persistent workers
batches = iter(loader)
next(batches)
print(*[w.pid for w in loader.loader._iterator._workers], flush=True)
sys.stdin.readline()  # the test signals the workers meanwhile
print(1 + sum(1 for _ in batches), flush=True)
# exits with the workers alive: multiprocessing then stops them with SIGTERM from this, their parent
'''


def test_loader_workers_leave_a_foreign_sigterm_to_their_process():
    """A SIGTERM from another process (as a scheduler sends to the whole group) leaves a loader worker serving
    its epoch; the parent's own SIGTERM, at exit, still ends it (else the exit would wait forever)."""
    proc = subprocess.Popen([sys.executable, "-c", _WORKERS], env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()  # (its workers follow their parent)
    assert proc.returncode == 0 and out.split() == ["8"], err[-3000:]  # all 8 batches of the epoch
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- interrupted runs, end to end
def _train_argv(data: Path, run: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "pitvit", "train", "--data", str(data), "--output", str(run),
            *_sets(f"data.num_workers={workers}", "train.epochs=3", "log.interval=1")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """192 training images (12 batches an epoch) and an uninterrupted 3-epoch run with 0 workers."""
    root = tmp_path_factory.mktemp("interrupted")
    data = _images(root / "data", 48, val=4)
    assert cli(_train_argv(data, root / "ref", 0)[3:]) == 0
    return data, _last(root / "ref")


def _interrupt(argv: list[str], run: Path, sig: int) -> subprocess.Popen:
    """Start the run in a process group of its own and signal the whole group (the main process and its loader
    workers, as a scheduler or `timeout` does) once epoch 2 has begun."""
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    log, deadline = run / "log.txt", time.time() + 240
    while not (log.exists() and "epoch 2 [" in log.read_text()):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the run did not reach epoch 2"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    return proc


def _resumes_exactly(reference, tmp_path, capsys, sig: int, workers: int) -> None:
    data, ref = reference
    run = tmp_path / "run"
    argv = _train_argv(data, run, workers)
    proc = _interrupt(argv, run, sig)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, proc.stderr.read()[-3000:]
        ckpt = _last(run)
        assert ckpt["epoch"] in (1, 2) and 0 < ckpt["step_in_epoch"] < 12  # saved mid-epoch
        assert "stopped by SIGTERM" in (run / "log.txt").read_text() and not _temps(run)
        # resuming that epoch with another global batch would skip other images: refused, nothing written
        _refused(capsys, argv[3:] + ["--set", "data.batch_size=8"], 5, ["middle of epoch", "global batch 16 -> 8"],
                 [run])
    else:
        assert proc.returncode == -signal.SIGKILL
        assert not (run / "last.pt").exists() or _last(run)["step_in_epoch"] == 0  # the last finished epoch
    assert cli(argv[3:]) == 0  # the same command again
    end = _last(run)
    assert end["epoch"] == 3 and not _temps(run)
    for key in ("state_dict", "ema_state_dict"):
        assert end[key].keys() == ref[key].keys()
        assert all(torch.equal(end[key][k], ref[key][k]) for k in ref[key]), key
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


@pytest.mark.parametrize("sig,workers", [
    (signal.SIGTERM, 2), (signal.SIGKILL, 0),
    *(pytest.param(s, w, marks=pytest.mark.slow) for s, w in ((signal.SIGTERM, 0), (signal.SIGTERM, 1),
                                                              (signal.SIGKILL, 1), (signal.SIGKILL, 2)))],
    ids=["sigterm-2", "sigkill-0", "sigterm-0", "sigterm-1", "sigkill-1", "sigkill-2"])
def test_interrupted_runs_resume_exactly(reference, tmp_path, capsys, sig, workers):
    """A run stopped (SIGTERM: saved mid-epoch) or killed (SIGKILL: the last finished epoch) with 0, 1 or 2
    loader workers, then the same command again, ends with exactly the weights and EMA of an uninterrupted run
    (mixup, cutmix, drop path, EMA and a per-step schedule on)."""
    _resumes_exactly(reference, tmp_path, capsys, sig, workers)
