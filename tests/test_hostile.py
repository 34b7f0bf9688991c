"""Hostile files, folders, numbers, signals and environments, met through the command line.

Each class of fault has a case from the list users reported and a second variant of it. A case passes on a
correct result, or on the documented exit status (``pitvit --help``) with one line on stderr, every file that
existed unchanged (hashed before and after) and no temporary file left.

References: numpy for the pixels a float or 16-bit image must decode to (``round(v * 255 / top)``); files
counted by hand for the folder walk; the exit-code table; the kernel's own answers (a FIFO, ``/dev/zero``,
``/dev/full``, a pipe whose reader is gone, ``flock``); a server that accepts connections and never answers,
standing in for an unreachable Hub.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pitvit import create_model, save_weights
from pitvit.cli import main as cli
from pitvit.data import load_image
from pitvit.utils.errors import Interrupted
from pitvit.utils.io import lock_folder, write_with

from test_faults import _hashes, _temps

pytestmark = pytest.mark.usefixtures("one_thread")

SRC = str(Path(__file__).resolve().parents[1] / "src")
TRAIN = ["model.name=pit_test", "data.batch_size=4", "data.num_workers=0", "train.amp=fp32", "train.device=cpu",
         "log.plot=false", "train.threads=1", "train.epochs=1"]


def _sets(*items: str) -> list[str]:
    return [x for s in (*TRAIN, *items) for x in ("--set", s)]


def _line(err: str, command: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith(f"pitvit {command}: error: "), err[-2000:]
    return lines[0]


def _refused(capsys, argv: list[str], code: int, words: list[str], unchanged: list[Path] = ()) -> str:
    before = _hashes(*unchanged)
    assert cli(argv) == code
    line = _line(capsys.readouterr().err, argv[0])
    for w in words:
        assert w in line, (w, line)
    assert _hashes(*unchanged) == before
    return line


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.update(extra)
    return env


def _pitvit(args: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m pitvit ARGS`` in a child; ``timeout`` only guards against a hang (it is not what is tested)."""
    kw.setdefault("env", _env())
    kw.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "pitvit", *args], timeout=timeout, text=True, **kw)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """Three classes of four 16 px images (train and val), and weights for them."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in "abc":
            (root / "data" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / "data" / split / c / f"{i}.png")
    torch.manual_seed(0)
    model = create_model("pit_test", num_classes=3, img_size=16)
    save_weights(model, root / "w.safetensors")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(sd, root / "w.pth")
    bad = dict(sd, **{"head.weight": sd["head.weight"].clone()})
    bad["head.weight"][0, 0] = float("nan")
    torch.save(bad, root / "nan.pth")
    key = next(k for k in sd if k.endswith("norm.weight"))
    inf = dict(sd, **{key: sd[key].clone().fill_(float("inf"))})
    torch.save(inf, root / "inf.pth")
    from safetensors.torch import save_file

    save_file({k: (v * 100).to(torch.int8).contiguous() for k, v in sd.items()}, root / "int8.safetensors")
    torch.save({k: (v * 100).to(torch.int32) for k, v in sd.items()}, root / "int32.pth")
    os.mkfifo(root / "fifo.pth")
    (root / "img.png").write_bytes((root / "data" / "val" / "a" / "0.png").read_bytes())
    return root


# ---------------------------------------------------------------------------------------- 1. validation
@pytest.mark.parametrize("setting,words", [
    ("train.epochs=0", ["train.epochs=0", ">= 1"]),
    ("aug.mixup_prob=1.5", ["aug.mixup_prob=1.5", "[0, 1]"]),
    ("aug.smoothing=1.5", ["aug.smoothing=1.5", "[0, 1)"]),
    (f"train.seed={2 ** 80}", [f"train.seed={2 ** 80}", "[0, 2**63)"]),
    ("model.num_classes=0", ["model.num_classes=0", ">= 1"]),
    # variants
    ("train.seed=-1", ["train.seed=-1", "[0, 2**63)"]),
    ("aug.hflip=-0.1", ["aug.hflip=-0.1", "[0, 1]"]),
    ("model.img_size=2", ["model.img_size=2", ">= 4 (the patch of pit_test)"]),
    ("ema.decay=1", ["ema.decay=1.0", "[0, 1)"]),
    ("optim.lr=.nan", ["optim.lr=nan", ">= 0"]),
    ("data.format=tfrecord", ["data.format='tfrecord'", "one of auto, imagefolder"]),
])
def test_every_value_is_checked_against_its_range_before_anything_is_written(ws, tmp_path, capsys, setting, words):
    run = tmp_path / "run"
    _refused(capsys, ["train", "--data", str(ws / "data"), "--output", str(run), *_sets(setting)], 2, words,
             [ws / "data"])
    assert not run.exists()


@pytest.mark.parametrize("classes", [2, 1])
def test_a_head_narrower_than_the_dataset_is_refused_before_the_run_folder(ws, tmp_path, capsys, classes):
    run = tmp_path / "run"
    _refused(capsys, ["train", "--data", str(ws / "data"), "--output", str(run), *_sets(f"model.num_classes={classes}")],
             2, [f"model.num_classes={classes} is fewer than the 3 classes"])
    assert not run.exists()


# ---------------------------------------------------------------------------------------- 2. the folder walk
def _eval_count(ws: Path, data: Path, capsys) -> int:
    assert cli(["eval", "--weights", str(ws / "w.safetensors"), "--data", str(data), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    return int(out.split("], ")[1].split(" images")[0])


def test_the_walk_never_follows_a_folder_link_back_into_the_tree(ws, tmp_path, capsys):
    data = tmp_path / "data"
    for c in "abc":  # 12 real images, 4 per class, counted by hand
        (data / "val" / c).mkdir(parents=True)
        for i in range(4):
            (data / "val" / c / f"{i}.png").write_bytes((ws / "img.png").read_bytes())
    (data / "val" / "a" / "loop").symlink_to(".")
    (data / "val" / "a" / "up").symlink_to("..")
    # variants: a link to another class, a link to a file (one more name for one image), a dangling link
    (data / "val" / "b" / "to_c").symlink_to("../c")
    (data / "val" / "b" / "again.png").symlink_to("0.png")
    (data / "val" / "c" / "gone.png").symlink_to("nothing.png")
    assert _eval_count(ws, data, capsys) == 13


def test_special_files_are_skipped_unopened(ws, tmp_path):
    data = tmp_path / "data"
    for c in "abc":
        (data / "val" / c).mkdir(parents=True)
        (data / "val" / c / "0.png").write_bytes((ws / "img.png").read_bytes())
    os.mkfifo(data / "val" / "a" / "zz.jpg")  # opening it would wait for a writer for ever
    sock = socket.socket(socket.AF_UNIX)  # variant: a socket with an image's name
    sock.bind(str(data / "val" / "b" / "s.png"))
    try:
        done = _pitvit(["eval", "--weights", str(ws / "w.safetensors"), "--data", str(data), "--workers", "1"],
                       timeout=240)
    finally:
        sock.close()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 images" in done.stdout and "FIFO" in done.stderr and "socket" in done.stderr


@pytest.mark.parametrize("values,top", [
    (np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 0.123]], np.float32), 1.0),  # float TIFF in [0, 1]: was black
    (np.array([[0.0, 17.5, 128.0], [200.2, 254.6, 255.0]], np.float32), 255.0),  # variant: float in [0, 255]
])
def test_float_images_are_scaled_from_their_range(tmp_path, values, top):
    Image.fromarray(values, "F").save(tmp_path / "f.tif")
    got = np.asarray(load_image(tmp_path / "f.tif", True))
    assert np.array_equal(got, np.floor(values.astype(np.float64) * 255 / top + 0.5).astype(np.uint8))


def test_16_bit_tiff_is_scaled_and_a_nan_image_is_refused(tmp_path):
    v = np.array([[0, 257, 1000], [32768, 65534, 65535]], np.uint16)
    Image.fromarray(v).save(tmp_path / "a.tif")
    assert np.array_equal(np.asarray(load_image(tmp_path / "a.tif", True)),
                          (v.astype(np.int64) * 255 + 32767) // 65535)
    Image.fromarray(np.array([[np.nan, 1]], np.float32), "F").save(tmp_path / "nan.tif")
    assert "non-finite" in load_image(tmp_path / "nan.tif", False).reason


# ---------------------------------------------------------------------------------------- 3. weight files
@pytest.mark.parametrize("weights", ["fifo.pth", pytest.param("/dev/zero", marks=pytest.mark.slow)])
def test_weights_that_are_not_a_regular_file_are_refused_at_once(ws, weights):
    path = weights if weights.startswith("/") else str(ws / weights)
    done = _pitvit(["predict", "--model", "pit_test", "--weights", path, str(ws / "img.png")], timeout=240)
    assert done.returncode == 4
    assert "not a regular file" in _line(done.stderr, "predict") and path in done.stderr


@pytest.mark.parametrize("name,words", [("int8.safetensors", ["int8", "float32", "dequantize"]),
                                        ("int32.pth", ["int32", "float32"])])
def test_integer_weights_are_refused_naming_key_and_dtype(ws, capsys, name, words):
    line = _refused(capsys, ["predict", "--weights", str(ws / name), "--model", "pit_test", str(ws / "img.png")],
                    4, words, [ws / name])
    assert any(k in line for k in ("cls_token", "pos_embed", "patch_embed", "head"))


@pytest.mark.parametrize("name,key", [("nan.pth", "head.weight"), ("inf.pth", "norm.weight")])
def test_non_finite_weights_are_refused_unless_allowed(ws, tmp_path, capsys, name, key):
    out = tmp_path / "x.safetensors"
    _refused(capsys, ["convert", str(ws / name), str(out), "--model", "pit_test"], 4,
             [key, "non-finite", "--allow-nonfinite"], [ws / name])
    assert not out.exists()
    assert cli(["convert", str(ws / name), str(out), "--model", "pit_test", "--allow-nonfinite"]) == 0
    assert not all(torch.isfinite(t).all() for t in load_file(out).values())  # written as they were


# ---------------------------------------------------------------------------------------- 4. one run per folder
def test_a_second_run_into_a_locked_folder_stops_naming_the_holder(ws, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "note.txt").write_text("another run's file")
    with lock_folder(run):
        _refused(capsys, ["train", "--data", str(ws / "data"), "--output", str(run), *_sets()], 5,
                 [f"PID {os.getpid()}", str(run)], [run])
    assert sorted(p.name for p in run.iterdir()) == ["note.txt"]


@pytest.mark.slow
def test_two_runs_started_at_once_into_one_folder(ws, tmp_path):
    run = tmp_path / "run"
    argv = ["train", "--data", str(ws / "data"), "--output", str(run), *_sets("train.epochs=3")]
    procs = [subprocess.Popen([sys.executable, "-m", "pitvit", *argv], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    if results[1][0] == 0:  # the second began once the first had finished: it found the run done
        assert "nothing to do" in results[0][1] + results[1][1], results
    else:
        assert [code for code, _ in results] == [0, 5], results
        line = _line(results[1][1], "train")
        assert "another pitvit train (PID" in line or "another run wrote" in line
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 3 and torch.load(run / "last.pt", weights_only=True)["epoch"] == 3


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pitvit.utils.io import lock_folder; "
                               f"lock_folder({str(run)!r}); print('held', flush=True); time.sleep(600)"],
                              env=_env(), stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(Exception, match=f"PID {holder.pid}"):
        lock_folder(run)
    holder.kill()
    holder.wait()
    lock_folder(run).release()  # the kernel dropped the lock with the process


def test_a_forked_child_does_not_hold_the_lock(tmp_path):
    """A data loader's workers are forked from the run's main process; if the main process is killed and a worker
    lingers, the folder must be free at once (a flock belongs to the open file, which a forked child shares).
    Reference: the kernel, through a second lock attempt while the forked child is still alive."""
    import multiprocessing

    run = tmp_path / "run"
    run.mkdir()
    lock = lock_folder(run)
    ctx = multiprocessing.get_context("fork")
    running = ctx.Event()

    def work() -> None:
        running.set()
        time.sleep(60)

    child = ctx.Process(target=work)
    child.start()
    try:
        assert running.wait(30)  # the child runs (its at-fork hooks are done)
        lock.release()
        assert child.is_alive()
        lock_folder(run).release()  # free although the child forked while the lock was held is still running
    finally:
        child.kill()
        child.join()


# ---------------------------------------------------------------------------------------- 5. bounded parsing
def _billion_laughs() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    return "\n".join(lines + ["train: {epochs: *l9}"]) + "\n"


@pytest.mark.parametrize("text,words", [
    (_billion_laughs(), ["alias bomb"]),
    ("train: &x {epochs: *x}\n", ["recursive"]),  # variant: an alias inside itself
    ("model: {arch: " + "[" * 500 + "]" * 500 + "}\n", ["deeper than"]),  # variant: nesting
])
def test_recipes_are_parsed_with_bounds(ws, tmp_path, capsys, text, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    _refused(capsys, ["train", "--config", str(recipe), "--data", str(ws / "data"), "--output", str(tmp_path / "run")],
             2, [str(recipe), "refused", *words], [recipe])
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------- 6. writers clean up
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_during_a_write_leaves_the_old_file_and_no_temp(tmp_path, sig):
    target = tmp_path / "r.json"
    target.write_text("the previous result")

    def writer(tmp: Path) -> None:
        tmp.write_text("half of a new one")
        os.kill(os.getpid(), sig)  # what `kill` or a closing terminal does in the middle of a write
        time.sleep(5)  # the handler interrupts this

    with pytest.raises(Interrupted):
        write_with(target, writer)
    assert target.read_text() == "the previous result" and not _temps(tmp_path)
    assert signal.getsignal(sig) == signal.SIG_DFL  # given back


@pytest.mark.slow
def test_sigterm_during_export_leaves_the_previous_file(ws, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_text("the previous export")
    proc = subprocess.Popen([sys.executable, "-m", "pitvit", "export", "--weights", str(ws / "w.safetensors"),
                             "--out", str(out)], env=_env(), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not _temps(tmp_path):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:] if proc.poll() else ""
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert err.strip().splitlines()[-1] == "pitvit export: interrupted (SIGTERM)" and "Traceback" not in err
    assert out.read_text() == "the previous export" and not _temps(tmp_path)


@pytest.mark.slow
def test_ctrl_c_during_eval_with_workers_prints_no_worker_traceback(ws, tmp_path):
    data = tmp_path / "data"
    for c in "abc":
        (data / "val" / c).mkdir(parents=True)
        for i in range(100):
            (data / "val" / c / f"{i}.png").write_bytes((ws / "img.png").read_bytes())
    proc = subprocess.Popen([sys.executable, "-m", "pitvit", "eval", "--weights", str(ws / "w.safetensors"),
                             "--data", str(data), "--workers", "2", "--batch-size", "1"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # a runner that ignores SIGINT (a background job) would pass that on: Python keeps it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 240
    while not (children.exists() and len(children.read_text().split()) >= 2):  # the loader's workers run
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group, workers included
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "pitvit eval: interrupted", err[-3000:]


# ---------------------------------------------------------------------------------------- 7. output, environment
@pytest.mark.parametrize("args", [["models"], pytest.param(["predict", "--weights", "{w}/w.safetensors", "{w}/img.png"],
                                                          marks=pytest.mark.slow)])
def test_a_reader_that_stops_early_ends_the_command_quietly(ws, args):
    read, write = os.pipe()
    os.close(read)  # `| head -1` after its line: every write now fails with EPIPE
    try:
        done = _pitvit([a.format(w=ws) for a in args], stdout=write, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "error" not in done.stderr.lower()


@pytest.mark.parametrize("args", [["models"], pytest.param(["predict", "--weights", "{w}/w.safetensors", "{w}/img.png"],
                                                          marks=pytest.mark.slow)])
def test_a_full_stdout_is_one_output_error(ws, args):
    with open("/dev/full", "w") as full:
        done = _pitvit([a.format(w=ws) for a in args], stdout=full, stderr=subprocess.PIPE, capture_output=False)
    assert done.returncode == 6
    assert "cannot write to standard output: no space left" in _line(done.stderr, args[0])


@pytest.mark.parametrize("missing,args,extra", [
    ("matplotlib", ["plot", "{w}"], "plot"),
    pytest.param("onnx", ["export", "--weights", "{w}/w.safetensors", "--out", "{w}/x.onnx"], "onnx",
                 marks=pytest.mark.slow),
    pytest.param("onnxruntime", ["export", "--weights", "{w}/w.safetensors", "--out", "{w}/x.onnx"], "onnx",
                 marks=pytest.mark.slow),  # variant
])
def test_a_missing_extra_is_named(ws, tmp_path, missing, args, extra):
    shim = tmp_path / "shim" / missing
    shim.mkdir(parents=True)  # an installation without it: importing it fails as Python does
    (shim / "__init__.py").write_text(f'raise ModuleNotFoundError("No module named {missing}", name={missing!r})\n')
    env = _env(PYTHONPATH=f"{tmp_path / 'shim'}{os.pathsep}{SRC}")
    done = _pitvit([a.format(w=ws) for a in args], env=env)
    assert done.returncode == 2
    assert f"pip install 'pitvit[{extra}]'" in _line(done.stderr, args[0]) and not (ws / "x.onnx").exists()


class _Silent:
    """A server that accepts connections and never answers (an unreachable Hub behind a firewall)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.accepted.append(self.sock.accept()[0])
            except OSError:
                return


@pytest.mark.parametrize("etag_timeout", ["1", pytest.param(None, marks=pytest.mark.slow)])  # variant: pitvit's own short timeout
def test_an_unreachable_hub_fails_after_one_try(ws, tmp_path, etag_timeout):
    server = _Silent()
    env = _env(HF_HUB_CACHE=str(tmp_path / "cache"), HF_ENDPOINT=f"http://127.0.0.1:{server.sock.getsockname()[1]}",
               HF_HUB_OFFLINE="0")
    env.pop("HF_HUB_ETAG_TIMEOUT", None)
    if etag_timeout:
        env["HF_HUB_ETAG_TIMEOUT"] = etag_timeout
    done = _pitvit(["predict", "--weights", "hf-hub:timm/pit_ti_224.in1k", str(ws / "img.png")], env=env)
    server.sock.close()
    assert done.returncode == 4
    assert "not in the Hugging Face cache" in _line(done.stderr, "predict")
    # one request (its HTTP client may connect twice for it), not huggingface_hub's back-off: five retries per
    # file name, two file names, about 50 s
    assert 1 <= len(server.accepted) <= 2


@pytest.mark.parametrize("command,home", [
    ("plot", "empty"),  # matplotlib's font cache and config folder
    pytest.param("export", "empty", marks=pytest.mark.slow),  # onnxruntime's telemetry device id
    pytest.param("export", "unset", marks=pytest.mark.slow),
    pytest.param("export-openvino", "empty", marks=pytest.mark.slow),  # openvino's and nncf's telemetry (~/intel)
])
def test_nothing_is_written_under_home(ws, tmp_path, command, home):
    env = _env()
    env.pop("XDG_CACHE_HOME", None)
    env.pop("MPLCONFIGDIR", None)
    env.pop("ORT_DISABLE_TELEMETRY", None)
    if home == "unset":
        env.pop("HOME", None)
    else:
        env["HOME"] = str(tmp_path / "home")
        (tmp_path / "home").mkdir()
    if command == "plot":
        run = tmp_path / "run"
        run.mkdir()
        (run / "metrics.jsonl").write_text('{"epoch": 1, "lr": 0.001, "train_loss": 2.0, "val_loss": 1.9, '
                                           '"val_top1": 10.0}\n')
        args = ["plot", str(run), "--out", str(tmp_path / "c.png")]
    elif command == "export":
        args = ["export", "--weights", str(ws / "w.safetensors"), "--out", str(tmp_path / "m.onnx")]
    else:
        pytest.importorskip("openvino", reason="openvino not installed (the openvino extra)")
        args = ["export", "--weights", str(ws / "w.safetensors"), "--format", "openvino", "--out",
                str(tmp_path / "m.xml")]
    done = _pitvit(args, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "MPLCONFIGDIR" not in done.stderr
    if home != "unset":
        assert list((tmp_path / "home").rglob("*")) == []


@pytest.mark.parametrize("args,words", [
    (["export", "--weights", "{w}/w.safetensors", "--opset", "99", "--out", "{t}/m.onnx"], ["--opset 99", "7..20"]),
    (["export", "--weights", "{w}/w.safetensors", "--opset", "3", "--out", "{t}/m.onnx"], ["--opset 3"]),  # variant
    (["benchmark", "--model", "pit_test", "--img-size", "0"], ["--img-size 0", "patch (4 px)"]),
    (["benchmark", "--model", "pit_test", "--img-size", "3"], ["--img-size 3"]),  # variant
])
def test_out_of_range_options_are_one_line(ws, tmp_path, capsys, args, words):
    _refused(capsys, [a.format(w=ws, t=tmp_path) for a in args], 2, words, [ws / "w.safetensors"])
    assert not (tmp_path / "m.onnx").exists()
