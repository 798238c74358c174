"""`rullama serve` (src/rullama_py/server.py): the README's first command end to end, HTTP ranges as the
app's model reads use them, confinement to the served folders, the Ollama models, and its errors."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from conftest import require
from rullama_py import assets, server

ROOT = Path(__file__).resolve().parent.parent
DATA = b"GGUF" + bytes(range(256)) * 40  # 10,244 bytes, every offset distinguishable enough


def _needs(path: Path, what: str):
    require(None if path.exists() else f"{what} is missing: {path}", "the server tests")


class Client:
    """One keep-alive connection, as a browser's fetch uses."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def get(self, path: str, method: str = "GET", **headers):
        self.conn.request(method, path, headers=headers)
        r = self.conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


@pytest.fixture()
def ollama_store(tmp_path):
    blob = b"GGUF" + b"ollama-model" * 100
    digest = hashlib.sha256(blob).hexdigest()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / f"sha256-{digest}").write_bytes(blob)
    manifest = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "tiny" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(blob)}]}))
    return tmp_path, blob


@pytest.fixture()
def served(tmp_path, ollama_store):
    _needs(ROOT / "web/node_modules/pyodide/pyodide.mjs", "web/node_modules (run tools/setup.sh)")
    model = tmp_path / "model.gguf"
    model.write_bytes(DATA)
    srv = server.make_server("127.0.0.1", 0, model_path=model, ollama_root=ollama_store[0], build_wheels=False,
                             log=lambda m: None)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv, Client(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def test_readme_first_command_serves_the_app_and_the_real_model():
    """`rullama serve` (here with --port 0): prints the URL; the page, Pyodide, the wheels and the embedded
    Gemma 3 270M are served with the headers the page needs; Ctrl-C ends it cleanly."""
    model = assets.default_model_path()
    _needs(ROOT / "web/node_modules/pyodide/pyodide.mjs", "web/node_modules (run tools/setup.sh)")
    require(None if assets.is_default_model_ready(model) else f"the default model {model} is not downloaded "
            "(python -m rullama_py.assets)", "the server tests")
    # A shell starts a background job with SIGINT ignored, and a child inherits that: run so, `serve` would never
    # see the Ctrl-C below. Start it as a terminal does, with SIGINT's default action (a Python handler here,
    # which exec resets to the default).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "rullama_py.cli", "serve", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        url = None
        deadline = time.time() + 120  # the first start may build the project wheel
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("rullama serve: open "):
                url = line.split("open ", 1)[1].strip()
        assert url and url.startswith("http://127.0.0.1:"), f"no URL printed (exit {proc.poll()})"
        c = Client(urllib.parse.urlsplit(url).port)
        status, h, body = c.get("/")
        assert status == 200 and h["content-type"].startswith("text/html") and b'<script type="module" src="' in body
        assert h["cross-origin-opener-policy"] == "same-origin" and h["cross-origin-embedder-policy"] == "require-corp"
        status, h, body = c.get("/models/default.gguf", Range="bytes=0-3")
        assert (status, body) == (206, b"GGUF")
        assert h["content-range"] == f"bytes 0-3/{model.stat().st_size}"
        status, _, body = c.get("/wheels/index.json")
        assert status == 200 and any(w.startswith("rullama_py-") for w in json.loads(body)["wheels"])
        assert c.get("/pyodide/pyodide.mjs", "HEAD")[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


@pytest.mark.parametrize("rng, start, end", [
    ("bytes=0-3", 0, 3),
    ("bytes=100-4195", 100, 4195),
    ("bytes=10000-", 10000, len(DATA) - 1),
    ("bytes=-44", len(DATA) - 44, len(DATA) - 1),
    ("bytes=10200-99999", 10200, len(DATA) - 1),  # clipped at the end of the file
])
def test_ranges(served, rng, start, end):
    _, c = served
    status, h, body = c.get("/models/default.gguf", Range=rng)
    assert status == 206 and body == DATA[start:end + 1]
    assert h["content-range"] == f"bytes {start}-{end}/{len(DATA)}" and h["content-length"] == str(end - start + 1)


def test_whole_file_head_etag_and_unsatisfiable(served):
    srv, c = served
    status, h, body = c.get("/models/default.gguf")
    assert (status, body, h["accept-ranges"]) == (200, DATA, "bytes")
    etag = h["etag"]
    status, h, body = c.get("/models/default.gguf", "HEAD")
    assert (status, body, h["content-length"]) == (200, b"", str(len(DATA)))
    assert c.get("/models/default.gguf", **{"If-None-Match": etag})[0] == 304
    status, h, _ = c.get("/models/default.gguf", Range=f"bytes={len(DATA)}-")
    assert status == 416 and h["content-range"] == f"bytes */{len(DATA)}"
    # The file changed since the client's first range (If-Range no longer matches): the whole file, 200.
    status, _, body = c.get("/models/default.gguf", Range="bytes=0-3", **{"If-Range": '"stale"'})
    assert (status, body) == (200, DATA)
    status, _, body = c.get("/models/default.gguf", Range="bytes=0-3", **{"If-Range": etag})
    assert (status, body) == (206, DATA[:4])
    c.conn.request("POST", "/api/models", body=b"x")
    assert c.conn.getresponse().status == 405
    assert [r[3] for r in srv.requests][-1] == 405  # the request log the browser tests read


@pytest.mark.parametrize("path", [
    "/../pyproject.toml", "/%2e%2e/pyproject.toml", "/wheels/../../pyproject.toml", "/pyodide/%2e%2e/package.json",
    "/node_modules/pyodide/pyodide.mjs", "/package.json", "/package-lock.json", "/dist/wheels/index.json",
    "/.gitignore", "/a%00b", "/missing.js",
])
def test_nothing_outside_the_served_folders(served, path):
    _, c = served
    assert c.get(path)[0] == 404


def test_app_files_are_served(served):
    """The page's own script and stylesheet (as index.html names them), and the worker."""
    _, c = served
    index = c.get("/")[2].decode()
    script = re.search(r'<script type="module" src="([^"]+)"', index).group(1)
    css = re.search(r'<link rel="stylesheet" href="([^"]+)"', index).group(1)
    for path, kind in (("/" + script, "javascript"), ("/worker.js", "javascript"), ("/" + css, "text/css")):
        status, h, _ = c.get(path)
        assert status == 200 and kind in h["content-type"], (path, h["content-type"])


def test_models_listing_and_ollama_blobs(served, ollama_store):
    _, c = served
    _, blob = ollama_store
    status, _, body = c.get("/api/models")
    models = {m["id"]: m for m in json.loads(body)["models"]}
    assert status == 200 and models["default"]["size"] == len(DATA)
    tiny = models["ollama:tiny:latest"]
    assert tiny["size"] == len(blob)
    status, _, body = c.get("/" + tiny["url"], Range="bytes=4-15")
    assert (status, body) == (206, blob[4:16])
    assert c.get("/models/ollama/" + urllib.parse.quote("nothere:latest", safe=""))[0] == 404


def test_keep_alive_connection_sends_without_delay(served):
    """Headers and body are separate writes: with Nagle's algorithm on, each keep-alive response waited for
    the client's delayed ACK (about 40 ms). The server sets TCP_NODELAY on its connections."""
    srv, c = served
    c.get("/models/default.gguf", Range="bytes=0-3")
    import socket

    seen = []
    orig = server._Handler.setup

    def setup(self):
        orig(self)
        seen.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server._Handler.setup = setup
    try:
        Client(srv.server_address[1]).get("/models/default.gguf", Range="bytes=0-3")
    finally:
        server._Handler.setup = orig
    assert seen and seen[0] != 0


def test_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(server.ServeError, match="no such file"):
        server.make_server("127.0.0.1", 0, model_path=tmp_path / "nope.gguf", build_wheels=False, log=lambda m: None)
    with pytest.raises(server.ServeError, match="index.html"):
        server.make_server("127.0.0.1", 0, web_dir=tmp_path, build_wheels=False, log=lambda m: None)
    assert server.main(["--port", "0", "--model", str(tmp_path / "missing.gguf")]) == 1
    assert "missing.gguf: no such file" in capsys.readouterr().err


MMPROJ = b"GGUF" + bytes(range(255, -1, -1)) * 20  # 5,124 bytes, unlike DATA


@pytest.fixture()
def served_mmproj(tmp_path):
    """`rullama serve --model PATH --mmproj PATH`."""
    _needs(ROOT / "web/node_modules/pyodide/pyodide.mjs", "web/node_modules (run tools/setup.sh)")
    model, mmproj = tmp_path / "text.gguf", tmp_path / "mmproj-text-f16.gguf"
    model.write_bytes(DATA)
    mmproj.write_bytes(MMPROJ)
    srv = server.make_server("127.0.0.1", 0, model_path=model, mmproj_path=mmproj, build_wheels=False,
                             log=lambda m: None)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv, Client(srv.server_address[1])
    srv.shutdown()
    srv.server_close()


def test_mmproj_is_listed_with_its_model(served_mmproj):
    """The default entry names its projector ("mmproj": a URL path relative to the page, and its size),
    so the web app loads the pair."""
    _, c = served_mmproj
    status, _, body = c.get("/api/models")
    (entry,) = json.loads(body)["models"]
    assert status == 200 and entry["id"] == "default" and entry["url"] == "models/default.gguf"
    assert entry["mmproj"] == "models/default.mmproj.gguf" and entry["mmproj_size"] == len(MMPROJ)
    assert entry["mmproj_name"] == "mmproj-text-f16.gguf"
    assert entry["available"] is True and entry["size"] == len(DATA)


@pytest.mark.parametrize("rng, start, end", [
    ("bytes=0-3", 0, 3), ("bytes=100-2147", 100, 2147), ("bytes=5000-", 5000, len(MMPROJ) - 1),
    ("bytes=-24", len(MMPROJ) - 24, len(MMPROJ) - 1), ("bytes=5100-99999", 5100, len(MMPROJ) - 1),
])
def test_mmproj_ranges(served_mmproj, rng, start, end):
    _, c = served_mmproj
    status, h, body = c.get("/models/default.mmproj.gguf", Range=rng)
    assert status == 206 and body == MMPROJ[start:end + 1]
    assert h["content-range"] == f"bytes {start}-{end}/{len(MMPROJ)}" and h["accept-ranges"] == "bytes"
    assert h["content-type"] == "application/octet-stream"
    assert h["cross-origin-embedder-policy"] == "require-corp"


def test_mmproj_whole_head_and_unsatisfiable(served_mmproj):
    _, c = served_mmproj
    status, h, body = c.get("/models/default.mmproj.gguf")
    assert (status, body) == (200, MMPROJ)
    status, h, body = c.get("/models/default.mmproj.gguf", "HEAD")
    assert (status, body, h["content-length"]) == (200, b"", str(len(MMPROJ)))
    status, h, _ = c.get("/models/default.mmproj.gguf", Range=f"bytes={len(MMPROJ)}-")
    assert status == 416 and h["content-range"] == f"bytes */{len(MMPROJ)}"
    assert c.get("/models/default.gguf", Range="bytes=4-7")[2] == DATA[4:8]  # the model is still the model


@pytest.mark.parametrize("path", [
    "/models/default.mmproj.gguf/", "/models/default.mmproj.gguf/../default.gguf", "/models/%2e%2e/pyproject.toml",
    "/models/mmproj-text-f16.gguf", "/models/default.mmproj.gguf%00", "/models/../models/default.mmproj.gguf",
    "/models/ollama/default.mmproj.gguf",
])
def test_mmproj_confinement(served_mmproj, path):
    """Only the one projector file is served, by its one URL; never its folder or anything by its own name."""
    _, c = served_mmproj
    assert c.get(path)[0] == 404


def test_without_mmproj_there_is_none(served):
    _, c = served
    status, _, body = c.get("/api/models")
    default = {m["id"]: m for m in json.loads(body)["models"]}["default"]
    assert not any(k.startswith("mmproj") for k in default)
    assert c.get("/models/default.mmproj.gguf")[0] == 404


def test_mmproj_errors(tmp_path, capsys):
    model = tmp_path / "m.gguf"
    model.write_bytes(DATA)
    with pytest.raises(server.ServeError, match="--mmproj needs --model"):
        server.make_server("127.0.0.1", 0, mmproj_path=model, build_wheels=False, log=lambda m: None)
    with pytest.raises(server.ServeError, match="no such file"):
        server.make_server("127.0.0.1", 0, model_path=model, mmproj_path=tmp_path / "nope.gguf", build_wheels=False,
                           log=lambda m: None)
    from rullama_py import cli

    assert cli.main(["serve", "--port", "0", "--model", str(model), "--mmproj", str(tmp_path / "gone.gguf")]) == 1
    assert capsys.readouterr().err == f"rullama serve: --mmproj {tmp_path / 'gone.gguf'}: no such file\n"


# -- the speech model (Kokoro) beside the chat model -------------------------------------------------------------

KOKORO = b"GGUF" + bytes(range(0, 256, 3)) * 50  # 4,304 bytes, unlike DATA and MMPROJ


def _serve(**kw):
    srv = server.make_server("127.0.0.1", 0, build_wheels=False, log=lambda m: None, **kw)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv, Client(srv.server_address[1])


@pytest.fixture()
def served_kokoro(tmp_path):
    """`rullama serve --model PATH --kokoro PATH`."""
    _needs(ROOT / "web/node_modules/pyodide/pyodide.mjs", "web/node_modules (run tools/setup.sh)")
    model, kokoro = tmp_path / "chat.gguf", tmp_path / "kokoro-v1.0-f16.gguf"
    model.write_bytes(DATA)
    kokoro.write_bytes(KOKORO)
    srv, c = _serve(model_path=model, kokoro_path=kokoro)
    yield srv, c, kokoro
    srv.shutdown()
    srv.server_close()


def test_kokoro_is_listed_beside_the_models_and_served_by_ranges(served_kokoro):
    """/api/models names the speech model in fields of its own (not an entry of the chat models' list, which
    the page's model picker shows); the file answers ranges like every model."""
    _, c, kokoro = served_kokoro
    status, _, body = c.get("/api/models")
    listing = json.loads(body)
    assert status == 200 and [m["id"] for m in listing["models"]] == ["default"]
    assert listing["kokoro"] == "models/kokoro.gguf" and listing["kokoro_name"] == kokoro.name
    assert listing["kokoro_size"] == len(KOKORO) and listing["kokoro_available"] is True
    for rng, start, end in (("bytes=0-3", 0, 3), ("bytes=1000-", 1000, len(KOKORO) - 1),
                            ("bytes=-17", len(KOKORO) - 17, len(KOKORO) - 1)):
        status, h, body = c.get("/" + listing["kokoro"], Range=rng)
        assert status == 206 and body == KOKORO[start:end + 1] and h["accept-ranges"] == "bytes"
        assert h["content-range"] == f"bytes {start}-{end}/{len(KOKORO)}"
        assert h["cross-origin-embedder-policy"] == "require-corp"
    status, h, body = c.get("/models/kokoro.gguf", "HEAD")
    assert (status, body, h["content-length"]) == (200, b"", str(len(KOKORO)))
    assert c.get("/models/kokoro.gguf", Range=f"bytes={len(KOKORO)}-")[0] == 416
    assert c.get("/models/default.gguf", Range="bytes=4-7")[2] == DATA[4:8]  # the chat model is still the chat model


@pytest.mark.parametrize("path", ["/models/kokoro.gguf/", "/models/kokoro-v1.0-f16.gguf", "/models/kokoro.gguf%00",
                                  "/models/%6bokoro.gguf/../default.gguf", "/models/ollama/kokoro.gguf"])
def test_kokoro_confinement(served_kokoro, path):
    """Only the one file, by its one URL; never its folder or anything by its own name."""
    _, c, _ = served_kokoro
    assert c.get(path)[0] == 404


def test_kokoro_default_is_the_setups_file_and_absent_means_unavailable(tmp_path, monkeypatch):
    """Without --kokoro the setup's F16 file is served; before the setup built it the listing says it is
    unavailable (size null) and its URL answers 404; a file that appears later is served without a restart."""
    _needs(ROOT / "web/node_modules/pyodide/pyodide.mjs", "web/node_modules (run tools/setup.sh)")
    model, later = tmp_path / "chat.gguf", tmp_path / "cache" / "kokoro-v1.0-f16.gguf"
    model.write_bytes(DATA)
    asked = []
    monkeypatch.setattr(assets, "kokoro_model_path", lambda kind="f16": asked.append(kind) or later, raising=False)
    logged = []
    srv = server.make_server("127.0.0.1", 0, model_path=model, build_wheels=False, log=logged.append)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        c = Client(srv.server_address[1])
        assert asked == ["f16"] and any("not built yet" in m for m in logged)
        listing = json.loads(c.get("/api/models")[2])
        assert listing["kokoro"] == "models/kokoro.gguf" and listing["kokoro_name"] == later.name
        assert listing["kokoro_size"] is None and listing["kokoro_available"] is False
        assert c.get("/models/kokoro.gguf")[0] == 404
        later.parent.mkdir()
        later.write_bytes(KOKORO)
        listing = json.loads(c.get("/api/models")[2])
        assert listing["kokoro_size"] == len(KOKORO) and listing["kokoro_available"] is True
        assert c.get("/models/kokoro.gguf", Range="bytes=0-3")[2] == b"GGUF"
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_phonemizer_is_served_for_speech(served):
    """npm phonemizer's module (espeak-ng in JavaScript), which the worker imports on the first speech; nothing
    else of its package."""
    _needs(ROOT / "web/node_modules/phonemizer/dist/phonemizer.js", "web/node_modules/phonemizer (run tools/setup.sh)")
    _, c = served
    status, h, body = c.get("/phonemizer/phonemizer.js")
    assert status == 200 and "javascript" in h["content-type"] and body == (
        ROOT / "web/node_modules/phonemizer/dist/phonemizer.js").read_bytes()
    for path in ("/phonemizer/../package.json", "/phonemizer/%2e%2e/package.json", "/phonemizer/"):
        assert c.get(path)[0] == 404


def test_kokoro_errors(tmp_path, capsys):
    model = tmp_path / "m.gguf"
    model.write_bytes(DATA)
    with pytest.raises(server.ServeError, match="--kokoro .*: no such file"):
        server.make_server("127.0.0.1", 0, model_path=model, kokoro_path=tmp_path / "nope.gguf", build_wheels=False,
                           log=lambda m: None)
    from rullama_py import cli

    assert cli.main(["serve", "--port", "0", "--model", str(model), "--kokoro", str(tmp_path / "gone.gguf")]) == 1
    assert capsys.readouterr().err == f"rullama serve: --kokoro {tmp_path / 'gone.gguf'}: no such file\n"
