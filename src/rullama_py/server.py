"""`rullama serve`: the web app, its Python runtime and the models, from one local HTTP server.

    rullama serve [--port 8800] [--model PATH [--mmproj PATH]] [--ollama [ROOT]] [--kokoro PATH]
    python -m rullama_py.server ...                 # the same without the CLI

    server.main(["--port", "0"])                     # what the CLI calls
    server.serve("127.0.0.1", 8800, model_path=None, ollama_root=None, mmproj_path=None, kokoro_path=None)

What is served (all from 127.0.0.1 unless --host says otherwise):

    /                         web/index.html, and the app's other files in web/ (not node_modules/, dist/)
    /pyodide/...              web/node_modules/pyodide: the Pyodide 0.27.7 distribution with numpy + micropip
    /phonemizer/...           web/node_modules/phonemizer/dist: npm phonemizer (espeak-ng in JavaScript), which
                              the worker imports the first time speech is used (text to phonemes)
    /wheels/...               web/dist/wheels: rullama_py, gguf and pyyaml wheels, installed by micropip
    /wheels/index.json        the names of the wheels the app installs (generated)
    /models/default.gguf      the model: --model PATH, else the embedded Gemma 3 270M from the setup cache
    /models/default.mmproj.gguf   --mmproj PATH: a llama.cpp vision projector for --model (a text-only GGUF)
    /models/kokoro.gguf       the speech model (Kokoro-82M): --kokoro PATH, else the setup's F16 Kokoro GGUF
    /api/models               JSON list of the models above, with sizes (Ollama ones with --ollama)
    /models/ollama/<name>     an Ollama model's GGUF blob, by name (`gemma3:270m`, URL-encoded)

/api/models is {"models": [entry, ...]}; an entry has id, name, url (relative to the page), size, source
("default" or "ollama"), available, digest (Ollama), and with --mmproj the default entry also has
"mmproj": "models/default.mmproj.gguf", "mmproj_size" (bytes) and "mmproj_name" (the file's own name): load
the model with that projector.
Ollama's Gemma 4 blobs carry their vision tower inside and have no "mmproj".
The speech model is not one of the models (the page's model list is for chat): /api/models also has
"kokoro": "models/kokoro.gguf" (relative to the page, like "mmproj"), "kokoro_name" (the file's own name),
"kokoro_size" (bytes, null when the file is absent) and "kokoro_available" (false when it is absent: not built
by the setup yet, or --kokoro named a file that has gone since); the app loads it beside the chat model, on
the same GPU device, the first time speech is used. /models/kokoro.gguf answers 404 while it is absent.

Every file answers GET and HEAD with `Accept-Ranges: bytes`; a single `Range: bytes=a-b` (or `a-`, `-n`)
gets 206 with Content-Range, an unsatisfiable one 416 with `Content-Range: bytes */size`. The app reads
models only by ranges (sources.HTTPSource), so a 2 GB model never has to fit in the browser's memory.

Where web/ comes from: the source checkout. web/ lives next to src/ (this file is src/rullama_py/server.py,
so web/ is two folders up); `--web DIR` or $RULLAMA_WEB point elsewhere. The wheel does not ship web/: its
node_modules/ (Pyodide, Playwright) is hundreds of megabytes and comes from `tools/setup.sh`. Before serving,
the project wheel in web/dist/wheels is rebuilt when it is missing or older than the Python sources or
shaders (checked again whenever a page starts and asks for wheels/index.json), so the browser always runs
the code of the checkout.

Cross-origin isolation: every response carries `Cross-Origin-Opener-Policy: same-origin` and
`Cross-Origin-Embedder-Policy: require-corp`. The app does not need SharedArrayBuffer (stop is a message
the worker handles between tokens, since generation awaits the GPU at every token), but an isolated page
gets 5-microsecond `performance.now()` instead of 100 (Pyodide's time.perf_counter uses it: tokens/s and the
host-cost numbers depend on it). Everything the page loads is same-origin, so require-corp costs nothing;
a model URL on another origin still works when that server allows CORS (fetch() is a CORS request).
"""

from __future__ import annotations

import argparse
import email.utils
import importlib.util
import json
import mimetypes
import os
import re
import subprocess
import sys
import threading
import urllib.parse
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from . import assets, ollama

__all__ = ["serve", "main", "make_server", "AppServer", "ServeError", "DEFAULT_PORT", "web_root"]

DEFAULT_PORT = 8800
MMPROJ_URL = "models/default.mmproj.gguf"  # where --mmproj is served (relative to the page, as in /api/models)
KOKORO_URL = "models/kokoro.gguf"  # where the speech model is served (relative to the page, as in /api/models)
DEFAULT_HOST = "127.0.0.1"
# The wheels the page installs with micropip (deps=False); web/dist/wheels also holds pytest & co for tests.
RUNTIME_WHEELS = ("rullama_py", "gguf", "pyyaml")
_CHUNK = 1 << 20

# Explicit types: mimetypes reads the system's tables, which may lack .wasm or call .js application/javascript.
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".zip": "application/zip",
    ".whl": "application/zip",
    ".gguf": "application/octet-stream",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",
}

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.I)


class ServeError(RuntimeError):
    """The server cannot start: web/ or the Pyodide distribution is missing, or a model path is wrong."""


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def web_root() -> Path:
    """web/ of the source checkout (or $RULLAMA_WEB)."""
    env = os.environ.get("RULLAMA_WEB")
    return Path(env).expanduser().resolve() if env else repo_root() / "web"


def content_type(path: Path) -> str:
    return _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def parse_range(header: str | None, size: int):
    """(start, end) inclusive for a single satisfiable range; None to send the whole file (no header, a
    malformed or multi-range header: RFC 9110 lets a server ignore those); "unsatisfiable" for 416."""
    if not header:
        return None
    m = _RANGE.match(header)
    if not m or (not m.group(1) and not m.group(2)):
        return None
    a, b = m.groups()
    if a == "":  # suffix: the last b bytes
        n = int(b)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(a)
    end = size - 1 if b == "" else min(int(b), size - 1)
    if b != "" and int(b) < start:
        return None  # invalid (last < first): ignore it, as RFC 9110 says
    if start >= size:
        return "unsatisfiable"
    return start, end


def _load_pyodide_dist():
    """tools/pyodide_dist.py of the checkout (it builds the project wheel)."""
    path = repo_root() / "tools" / "pyodide_dist.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("rullama_pyodide_dist", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _newest_source_mtime() -> float:
    root = repo_root()
    newest = (root / "pyproject.toml").stat().st_mtime if (root / "pyproject.toml").exists() else 0.0
    for base, pattern in ((root / "src" / "rullama_py", "*.py"), (root / "shaders", "*.wgsl")):
        for p in base.rglob(pattern):
            newest = max(newest, p.stat().st_mtime)
    return newest


def ensure_wheels(wheels_dir: Path, log=print) -> list[str]:
    """Make sure web/dist/wheels holds what the page installs; (re)build the project wheel when it is
    missing or older than the sources. Returns the runtime wheel names."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    own = sorted(wheels_dir.glob("rullama_py-*.whl"))
    stale = not own or (
        (repo_root() / "src" / "rullama_py").is_dir() and min(p.stat().st_mtime for p in own) < _newest_source_mtime()
    )
    if stale:
        dist = _load_pyodide_dist()
        if dist is None:
            if not own:
                raise ServeError(f"{wheels_dir} has no rullama_py wheel and tools/pyodide_dist.py is not here to build one")
        else:
            log(f"rullama serve: building the rullama_py wheel into {wheels_dir} ...")
            dist.WHEELS = wheels_dir
            dist.build_project_wheel()
    names = runtime_wheels(wheels_dir)
    missing = [w for w in RUNTIME_WHEELS if not any(n.lower().startswith(w + "-") for n in names)]
    if missing:
        raise ServeError(f"{wheels_dir} lacks the {', '.join(missing)} wheel(s): run tools/setup.sh "
                         "(or python tools/pyodide_dist.py)")
    return names


def runtime_wheels(wheels_dir: Path) -> list[str]:
    return sorted(p.name for p in wheels_dir.glob("*.whl") if p.name.split("-")[0].lower() in RUNTIME_WHEELS)


class AppServer(ThreadingHTTPServer):
    """The HTTP server with what it serves. `requests` keeps the last few thousand requests (method, path,
    Range header, status) so tests can check that models were read by ranges."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, *, web: Path, model: Path | None, ollama_root: Path | None, verbose: bool = False,
                 rebuild: bool = False, mmproj: Path | None = None, kokoro: Path | None = None):
        self.web = Path(web)
        self.pyodide = self.web / "node_modules" / "pyodide"
        self.phonemizer = self.web / "node_modules" / "phonemizer" / "dist"
        self.wheels = self.web / "dist" / "wheels"
        self.model = Path(model) if model is not None else None
        self.mmproj = Path(mmproj) if mmproj is not None else None
        self.kokoro = Path(kokoro) if kokoro is not None else None
        self.ollama_root = Path(ollama_root) if ollama_root is not None else None
        self.verbose = verbose
        self.rebuild = rebuild  # rebuild a stale project wheel when a page asks for the wheel list
        self._build_lock = threading.Lock()
        self.requests: deque = deque(maxlen=5000)
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def log_request_seen(self, entry) -> None:
        with self._lock:
            self.requests.append(entry)

    def models(self) -> list[dict]:
        out = []
        if self.model is not None:
            size = self.model.stat().st_size if self.model.is_file() else None
            entry = {"id": "default", "name": self.model.name, "url": "models/default.gguf", "size": size,
                     "source": "default", "available": size is not None}
            if self.mmproj is not None:
                entry["mmproj"] = MMPROJ_URL
                entry["mmproj_name"] = self.mmproj.name
                entry["mmproj_size"] = self.mmproj.stat().st_size if self.mmproj.is_file() else None
                entry["available"] = size is not None and entry["mmproj_size"] is not None
            out.append(entry)
        if self.ollama_root is not None:
            for m in ollama.list_models(self.ollama_root):
                out.append({"id": "ollama:" + m.name, "name": m.name, "source": "ollama", "size": m.size,
                            "digest": m.digest, "available": True,
                            "url": "models/ollama/" + urllib.parse.quote(m.name, safe="")})
        return out

    def speech(self) -> dict:
        """The speech model's fields of /api/models (see the module docstring)."""
        if self.kokoro is None:
            return {"kokoro": None, "kokoro_name": None, "kokoro_size": None, "kokoro_available": False}
        size = self.kokoro.stat().st_size if self.kokoro.is_file() else None
        return {"kokoro": KOKORO_URL, "kokoro_name": self.kokoro.name, "kokoro_size": size,
                "kokoro_available": size is not None}

    def resolve(self, path: str):
        """A URL path -> ("file", Path) | ("json", obj) | None (404). Never a path outside the served folders."""
        if path in ("/", "/index.html"):
            return "file", self.web / "index.html"
        if path == "/api/models":
            return "json", {"models": self.models(), **self.speech()}
        if path == "/wheels/index.json":
            if self.rebuild:  # a page (re)starts: give it the code of the checkout as it is now
                with self._build_lock:
                    ensure_wheels(self.wheels, log=lambda m: sys.stderr.write(m + "\n"))
            return "json", {"wheels": runtime_wheels(self.wheels)}
        if path == "/models/default.gguf":
            return ("file", self.model) if self.model is not None else None
        if path == "/" + MMPROJ_URL:
            return ("file", self.mmproj) if self.mmproj is not None else None
        if path == "/" + KOKORO_URL:
            return ("file", self.kokoro) if self.kokoro is not None else None
        if path.startswith("/models/ollama/") and self.ollama_root is not None:
            name = urllib.parse.unquote(path[len("/models/ollama/"):])
            try:
                return "file", ollama.resolve(name, self.ollama_root).blob
            except ollama.OllamaError:
                return None
        for prefix, base in (("/pyodide/", self.pyodide), ("/phonemizer/", self.phonemizer), ("/wheels/", self.wheels)):
            if path.startswith(prefix):
                return _inside(base, path[len(prefix):])
        rel = path.lstrip("/")
        first = rel.split("/", 1)[0]
        # The app's own files only: not its npm packages, build output, package files or dot files.
        if first in ("node_modules", "dist") or first.startswith(".") or first.startswith("package"):
            return None
        return _inside(self.web, rel)


def _inside(base: Path, rel: str):
    rel = urllib.parse.unquote(rel)
    if not rel or "\x00" in rel or any(part in ("..", "") or part.startswith(".") for part in rel.split("/")):
        return None
    p = (base / rel).resolve()
    try:
        p.relative_to(base.resolve())
    except ValueError:
        return None
    return ("file", p) if p.is_file() else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rullama"
    timeout = 60  # an idle keep-alive connection does not hold a thread for ever
    # Headers and body go out in separate writes; with Nagle's algorithm the body then waits for the
    # client's delayed ACK, about 40 ms per request on a keep-alive connection (every browser fetch): a
    # model load of a few hundred range reads took seconds longer than its bytes need.
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("rullama serve: " + (fmt % args) + "\n")

    def _common_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("X-Content-Type-Options", "nosniff")
        # Revalidate every time (cheap with the ETag): a rebuilt wheel keeps its file name.
        self.send_header("Cache-Control", "no-cache")

    def _status(self, code: int, rng=None) -> None:
        self.server.log_request_seen((self.command, self.path, rng, code))

    def _error(self, code: int, message: str) -> None:
        body = message.encode()
        self.send_response(code)
        self._common_headers()
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self._status(code, self.headers.get("Range"))  # logged before the client can have the response
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        try:
            target = self.server.resolve(path)
        except (OSError, ServeError, subprocess.CalledProcessError) as e:
            self._error(500, f"{path}: {e}")
            return
        if target is None:
            self._error(404, f"not found: {path}")
            return
        kind, value = target
        if kind == "json":
            self._send_json(value)
        else:
            self._send_file(value)

    def do_POST(self):
        self._error(405, "read-only server")

    def _send_json(self, obj) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self._common_headers()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self._status(200)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_file(self, path: Path) -> None:
        rng_header = self.headers.get("Range")
        try:
            f = open(path, "rb")
        except OSError:
            self._error(404, f"not found: {self.path}")
            return
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = f'"{size:x}-{st.st_mtime_ns:x}"'
            rng = parse_range(rng_header, size)
            if_range = self.headers.get("If-Range")
            if rng is not None and if_range and if_range.strip() != etag:
                rng = None  # the file changed since the client's first part: send it whole (RFC 9110 13.1.5)
            if rng is None and rng_header is None and self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self._common_headers()
                self.send_header("ETag", etag)
                self._status(304)
                self.end_headers()
                return
            if rng == "unsatisfiable":
                self.send_response(416)
                self._common_headers()
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self._status(416, rng_header)
                self.end_headers()
                return
            if rng is None:
                start, end, code = 0, size - 1, 200
            else:
                (start, end), code = rng, 206
            length = end - start + 1 if size else 0
            self.send_response(code)
            self._common_headers()
            self.send_header("Content-Type", content_type(path))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self._status(code, rng_header)
            self.end_headers()
            if self.command == "HEAD" or length == 0:
                return
            f.seek(start)
            left = length
            try:
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        break  # the file shrank under us; the client sees a short body
                    self.wfile.write(chunk)
                    left -= len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the page cancelled (pause, reload): nothing to report


def make_server(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, model_path=None, ollama_root=None, *,
                web_dir=None, verbose: bool = False, build_wheels: bool = True, log=print,
                mmproj_path=None, kokoro_path=None) -> AppServer:
    """A ready (not yet serving) AppServer; call `serve_forever()` on it, `shutdown()` to stop. `kokoro_path`
    None serves the setup's F16 Kokoro GGUF (listed as unavailable until the setup has built it)."""
    web = Path(web_dir).resolve() if web_dir is not None else web_root()
    if not (web / "index.html").is_file():
        raise ServeError(f"no web app in {web} (index.html missing): `rullama serve` runs from a source checkout")
    if not (web / "node_modules" / "pyodide" / "pyodide.mjs").is_file():
        raise ServeError(f"{web / 'node_modules' / 'pyodide'} is missing: run tools/setup.sh")
    mmproj = None
    if mmproj_path is not None:
        if model_path is None:
            raise ServeError("--mmproj needs --model: the projector is served with that model")
        mmproj = Path(mmproj_path).expanduser().resolve()
        if not mmproj.is_file():
            raise ServeError(f"--mmproj {mmproj_path}: no such file")
    if build_wheels:
        ensure_wheels(web / "dist" / "wheels", log=log)
    if model_path is None:
        model = assets.default_model_path()
        if not model.is_file():
            log(f"rullama serve: the default model {model} is not downloaded yet "
                "(python -m rullama_py.assets); /models/default.gguf answers 404 until it is")
    else:
        model = Path(model_path).expanduser().resolve()
        if not model.is_file():
            raise ServeError(f"--model {model_path}: no such file")
    kokoro = _kokoro_file(kokoro_path, log)
    root = None
    if ollama_root is not None:
        root = Path(ollama_root).expanduser().resolve()
        if not (root / "manifests").is_dir():
            log(f"rullama serve: {root} has no manifests/ folder: no Ollama models to list")
    return AppServer((host, port), web=web, model=model, ollama_root=root, verbose=verbose, rebuild=build_wheels,
                     mmproj=mmproj, kokoro=kokoro)


def _kokoro_file(kokoro_path, log) -> Path | None:
    """The speech model to serve: --kokoro PATH (which must exist), else the setup's default file (which may
    not be built yet: then it is listed as unavailable, and the app says so when speech is asked for)."""
    if kokoro_path is not None:
        kokoro = Path(kokoro_path).expanduser().resolve()
        if not kokoro.is_file():
            raise ServeError(f"--kokoro {kokoro_path}: no such file")
        return kokoro
    default = getattr(assets, "kokoro_model_path", None)
    if default is None:
        return None
    kokoro = Path(default())
    if not kokoro.is_file():
        log(f"rullama serve: the speech model {kokoro} is not built yet (python -m rullama_py.assets); "
            f"/{KOKORO_URL} answers 404 until it is")
    return kokoro


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, model_path=None, ollama_root=None, *,
          web_dir=None, verbose: bool = False, mmproj_path=None, kokoro_path=None) -> None:
    """Serve until interrupted (Ctrl-C). Prints the URL to open."""
    srv = make_server(host, port, model_path, ollama_root, web_dir=web_dir, verbose=verbose, mmproj_path=mmproj_path,
                      kokoro_path=kokoro_path)
    print(f"rullama serve: open {srv.url}", flush=True)
    print(f"  model: {srv.model}" + (f"\n  vision projector: {srv.mmproj}" if srv.mmproj else "")
          + (f"\n  Ollama store: {srv.ollama_root}" if srv.ollama_root else "")
          + (f"\n  speech (Kokoro): {srv.kokoro}" + ("" if srv.kokoro.is_file() else " (not built yet)")
             if srv.kokoro else ""), flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="rullama serve", description="Serve the rullama web app and models locally.")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--model", metavar="PATH", help="GGUF to serve as models/default.gguf (default: the embedded Gemma 3 270M)")
    p.add_argument("--mmproj", metavar="PATH",
                   help="a llama.cpp vision projector GGUF for --model, listed with it so the app loads both")
    p.add_argument("--ollama", nargs="?", const="", metavar="ROOT",
                   help="also serve the models of an Ollama store (default root: $OLLAMA_MODELS or ~/.ollama/models)")
    p.add_argument("--kokoro", metavar="PATH",
                   help="the Kokoro speech model GGUF to serve beside the chat model (default: the setup's F16 file)")
    p.add_argument("--web", metavar="DIR", help="the web app folder (default: web/ of the source checkout)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    ollama_root = None
    if args.ollama is not None:
        ollama_root = args.ollama or ollama.models_dir()
    try:
        serve(args.host, args.port, args.model, ollama_root, web_dir=args.web, verbose=args.verbose,
              mmproj_path=args.mmproj, kokoro_path=args.kokoro)
    except (ServeError, OSError) as e:
        print(f"rullama serve: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
