"""A tiny threaded HTTP server with Range support, for tests only. Binds 127.0.0.1 on a free port.

    with RangeServer({"/model.gguf": path_or_bytes}) as srv:
        url = srv.url("/model.gguf")
        srv.requests   # list of (path, Range header) seen, to check request coalescing

`ranges=False` makes it answer 200 with the whole file (a server that ignores Range).
"""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeServer:
    def __init__(self, files: dict, ranges: bool = True):
        self.files = {k: (Path(v) if isinstance(v, (str, Path)) else bytes(v)) for k, v in files.items()}
        self.ranges = ranges
        self.requests: list = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a stuck client cannot hold a server thread for long
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _size_and_reader(self):
                f = server.files.get(self.path)
                if f is None:
                    return None, None
                if isinstance(f, bytes):
                    return len(f), lambda a, n: f[a : a + n]

                def read(a, n, p=f):
                    with open(p, "rb") as fh:
                        fh.seek(a)
                        return fh.read(n)

                return f.stat().st_size, read

            def _send_body(self, read, start, length):
                pos, end = start, start + length
                while pos < end:
                    chunk = read(pos, min(1 << 20, end - pos))
                    self.wfile.write(chunk)
                    pos += len(chunk)

            def do_HEAD(self):
                self.do_GET(head=True)

            def do_GET(self, head=False):
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append((self.path, rng))
                size, read = self._size_and_reader()
                if size is None:
                    self.send_error(404, "Not Found")
                    return
                m = _RANGE.match(rng or "") if server.ranges else None
                if not m:
                    self.send_response(200)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    if not head:
                        self._send_body(read, 0, size)
                    return
                a, b = m.groups()
                if a == "":  # suffix range: the last b bytes
                    start, end = max(0, size - int(b)), size - 1
                else:
                    start, end = int(a), (int(b) if b else size - 1)
                end = min(end, size - 1)
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if not head:
                    self._send_body(read, start, end - start + 1)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
