"""Published weights by name (``pretrained=True``, ``hf-hub:`` references), without the network.

References: the cache layout is huggingface_hub's documented one (``models--OWNER--NAME/{blobs,refs,snapshots}``),
built here by hand; the stand-in Hub is a plain HTTP server on 127.0.0.1 that answers the way the Hub does
(``X-Repo-Commit`` and ``ETag`` on HEAD, byte ranges on GET); the weights are checked tensor by tensor
against the model that wrote them.
"""
from __future__ import annotations

import hashlib
import http.server
import re
import threading
from pathlib import Path

import huggingface_hub.constants  # noqa: F401  (read HF_* variables once, on import: import them while unset)
import pytest
import torch
from PIL import Image

import pitvit
from pitvit.cli import main as cli_main
from pitvit.models import CheckpointError, create_model, load_weights, read_state_dict, save_weights
from pitvit.utils.errors import ConfigError
from test_weights import randomized, same_tensors

pytestmark = pytest.mark.usefixtures("one_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "pitvit-tests/pit_test"
FILE_PATH = f"/{REPO}/resolve/main/model.safetensors"




def put_in_cache(cache: Path, repo_id: str, data: bytes, filename: str = "model.safetensors") -> Path:
    """One file of one repository in huggingface_hub's cache layout, as a download leaves it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT / filename
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(Path("..") / ".." / "blobs" / blob.name)
    return snapshot


@pytest.fixture
def hub_env(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of the test's own, and no real Hub: a dead endpoint catches any request."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing answers
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def weights_bytes(model: pitvit.PiT, tmp_path: Path, fmt: str = "safetensors") -> bytes:
    path = tmp_path / "written.safetensors"
    save_weights(model, path, format=fmt)
    return path.read_bytes()


# ------------------------------------------------------------------ from the cache, offline
def test_pretrained_loads_from_the_cache_offline(hub_env, tmp_path, monkeypatch):
    # timm publishes PiT weights in timm's layout; written that way here, by pitvit.
    src = randomized("pit_ti")
    put_in_cache(hub_env, "timm/pit_ti_224.in1k", weights_bytes(src, tmp_path, fmt="timm"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = create_model("pit_ti", pretrained=True)
    assert same_tensors(model.state_dict(), src.state_dict())
    same = create_model("pit_ti", weights="hf-hub:timm/pit_ti_224.in1k")
    assert same_tensors(same.state_dict(), src.state_dict())
    named = pitvit.model_from_checkpoint("hf-hub:timm/pit_ti_224.in1k")  # the reference names its variant
    assert named.model_name == "pit_ti" and same_tensors(named.state_dict(), src.state_dict())


def test_not_cached_offline_is_one_line_naming_the_file_and_the_way_out(hub_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as err:
        create_model("pit_ti", pretrained=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert "hf-hub:timm/pit_ti_224.in1k" in msg and "model.safetensors" in msg and "HF_HUB_OFFLINE" in msg
    assert "--weights PATH" in msg and str(hub_env) in msg


def test_pretrained_needs_published_weights_and_a_well_formed_reference(hub_env):
    with pytest.raises(ConfigError, match="pit_test has no published weights.*pit_ti"):
        create_model("pit_test", pretrained=True)
    with pytest.raises(ConfigError, match="not both"):
        create_model("pit_ti", pretrained=True, weights="x.pth")
    with pytest.raises(ConfigError, match="hf-hub:OWNER/NAME"):
        create_model("pit_ti", weights="hf-hub:pit_ti_224")


def test_read_state_dict_takes_a_reference(hub_env, tmp_path, monkeypatch):
    src = randomized()
    put_in_cache(hub_env, REPO, weights_bytes(src, tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert same_tensors(read_state_dict(f"hf-hub:{REPO}"), src.state_dict())


def test_cli_accepts_a_reference(hub_env, tmp_path, monkeypatch, capsys):
    src = randomized()
    put_in_cache(hub_env, REPO, weights_bytes(src, tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "converted.pth"
    assert cli_main(["convert", f"hf-hub:{REPO}", str(out), "--model", "pit_test"]) == 0
    assert same_tensors(torch.load(out, weights_only=True), src.state_dict())
    from pitvit.tools.evaluate import load_model  # what eval, predict and export build their model with

    assert same_tensors(load_model("pit_test", f"hf-hub:{REPO}").state_dict(), src.state_dict())
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    capsys.readouterr()
    assert cli_main(["predict", str(tmp_path / "red.png"), "--model", "pit_test", "--weights", f"hf-hub:{REPO}",
                     "--format", "json"]) == 0
    assert "red.png" in capsys.readouterr().out


# ------------------------------------------------------------------ a stand-in Hub on 127.0.0.1
class FakeHub(http.server.ThreadingHTTPServer):
    """Serves one file the way the Hub does; ``cut`` drops the first GET halfway, ``flip`` damages one byte."""

    def __init__(self, files: dict[tuple[str, str], bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.requests: list[tuple[str, str, str]] = []
        self.cut = False
        self.flip: int | None = None

    def file_requests(self) -> list[tuple[str, str, str]]:
        """Requests for repository files (huggingface_hub also asks the server about other things)."""
        return [r for r in self.requests if "/resolve/" in r[1]]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub

    def log_message(self, *args) -> None:
        pass

    def _lookup(self) -> bytes | None:
        m = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", self.path)
        return self.server.files.get((m.group(1), m.group(3))) if m else None

    def _head(self, data: bytes | None, length: int, status: int = 200) -> None:
        self.send_response(status if data is not None else 404)
        self.send_header("X-Repo-Commit", COMMIT)
        if data is None:
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
        else:
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_HEAD(self) -> None:
        self.server.requests.append(("HEAD", self.path, ""))
        data = self._lookup()
        self._head(data, len(data) if data else 0)

    def do_GET(self) -> None:
        rng = self.headers.get("Range", "")
        self.server.requests.append(("GET", self.path, rng))
        data = self._lookup()
        if data is None:
            return self._head(None, 0)
        if self.server.flip is not None:
            data = bytearray(data)
            data[self.server.flip] ^= 0x10
            data = bytes(data)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        body = data[start:]
        if self.server.cut:
            self.server.cut = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def fake_hub(hub_env, monkeypatch):
    server = FakeHub({})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_download_into_the_standard_cache_then_offline(fake_hub, hub_env, tmp_path, monkeypatch):
    src = randomized()
    fake_hub.files[(REPO, "model.safetensors")] = weights_bytes(src, tmp_path)
    assert not create_model("pit_test").state_dict()["head.weight"].equal(src.state_dict()["head.weight"])
    assert not fake_hub.requests  # nothing is asked of the Hub unless weights from it are
    model = create_model("pit_test", weights=f"hf-hub:{REPO}")
    assert same_tensors(model.state_dict(), src.state_dict())
    # pitvit's own HEAD first (is anyone there? one try, a short timeout), then huggingface_hub's HEAD and GET
    assert [r[:2] for r in fake_hub.file_requests()] == [("HEAD", FILE_PATH), ("HEAD", FILE_PATH), ("GET", FILE_PATH)]
    cached = hub_env / "models--pitvit-tests--pit_test" / "snapshots" / COMMIT / "model.safetensors"
    assert cached.is_file()
    fake_hub.requests.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = create_model("pit_test", weights=f"hf-hub:{REPO}")
    assert same_tensors(again.state_dict(), src.state_dict()) and not fake_hub.file_requests()


def test_interrupted_download_is_retried(fake_hub, tmp_path):
    src = randomized()
    fake_hub.files[(REPO, "model.safetensors")] = weights_bytes(src, tmp_path)
    fake_hub.cut = True
    model = create_model("pit_test", weights=f"hf-hub:{REPO}")
    assert same_tensors(model.state_dict(), src.state_dict())
    # huggingface_hub retried (resuming from what it had kept, or from the start) and the file is whole.
    assert [r[0] for r in fake_hub.file_requests()] == ["HEAD", "HEAD", "GET", "GET"]  # pitvit's probe first


def test_corrupt_download_is_caught_by_the_content_hash(fake_hub, tmp_path):
    src = randomized()
    data = weights_bytes(src, tmp_path)
    fake_hub.files[(REPO, "model.safetensors")] = data
    fake_hub.flip = len(data) - 10  # inside the last tensor's bytes
    with pytest.raises(CheckpointError) as err:
        load_weights(create_model("pit_test"), f"hf-hub:{REPO}")
    msg = str(err.value)
    assert "SHA-256" in msg and "damaged" in msg and "\n" not in msg
    blob, link = (Path(p) for p in msg.split("delete ")[1].split(" to fetch")[0].split(" and "))
    assert blob.parent.name == "blobs" and link.is_symlink() and link.resolve() == blob
    blob.unlink()  # as the message says
    link.unlink()
    fake_hub.flip = None
    assert same_tensors(read_state_dict(f"hf-hub:{REPO}"), src.state_dict())  # fetched again, intact


def test_missing_file_in_a_repository(fake_hub):
    with pytest.raises(CheckpointError, match="holds none of model.safetensors, pytorch_model.bin"):
        create_model("pit_test", weights=f"hf-hub:{REPO}")
