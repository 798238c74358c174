"""The web app's Python bridge (rullama_py.webapp.WebApp) driven natively on wgpu-py with the tiny Gemma 4
fixture: the same calls web/worker.js makes inside Pyodide, without a browser."""

import json
from pathlib import Path

import pytest

from rullama_py.webapp import WebApp

FIX = Path(__file__).resolve().parent.parent / "fixtures"
TINY = FIX / "gemma4_tiny_e2b_f32.gguf"
OPTS = json.dumps({"max_context": 128, "prefill_chunk": 16})
GREEDY = {"temperature": 0, "max_tokens": 6}


class Recorder:
    def __init__(self):
        self.events = []
        self.on_token = None

    def __call__(self, event, payload):
        p = json.loads(payload)
        self.events.append((event, p))
        if event == "token" and self.on_token:
            self.on_token(p)

    def tokens(self):
        return [p for e, p in self.events if e == "token"]


async def _load(rec=None, path=TINY, opts=OPTS):
    app = WebApp(rec or Recorder())
    r = json.loads(await app.load("path", str(path), opts))
    assert r["ok"], r
    return app, r


async def _chat(app, msgs, **req):
    return json.loads(await app.chat(json.dumps(msgs), json.dumps({**GREEDY, **req})))


async def test_load_reports_progress_and_identity():
    rec = Recorder()
    app, info = await _load(rec)
    phases = [p["phase"] for e, p in rec.events if e == "progress"]
    assert phases[0] == "open" and phases[-1] == "ready" and "weights" in phases
    assert info["has_vision"] is False and info["has_audio"] is False
    assert info["identity"] == app.identity and len(info["identity"]) == 64
    assert info["dispatches_per_token"] > 10 and info["tensors"] > 100
    assert info["fetched"] >= info["size"] * 0.8  # the whole file was read once (header window included)


async def test_chat_streams_stops_and_resumes_from_a_snapshot():
    rec = Recorder()
    app, info = await _load(rec)
    msgs = [{"role": "user", "content": "hello"}]
    r1 = await _chat(app, msgs)
    assert r1["ok"] and r1["finish_reason"] == "length" and r1["generated_tokens"] == 6
    streamed = rec.tokens()
    assert "".join(t["text"] for t in streamed) == r1["text"] and streamed[-1]["n"] == 6

    # stop after the third token (the page's stop message arrives between tokens the same way)
    rec.events.clear()
    rec.on_token = lambda p: app.stop() if p["n"] == 3 else None
    msgs += [{"role": "assistant", "content": r1["text"]}, {"role": "user", "content": "more"}]
    r2 = await _chat(app, msgs, max_tokens=50)
    rec.on_token = None
    assert r2["finish_reason"] == "stopped" and r2["generated_tokens"] == 3
    assert app.busy is False

    blob = await app.save_state()
    msgs += [{"role": "assistant", "content": r2["text"]}, {"role": "user", "content": "again"}]
    want = await _chat(app, msgs)

    # a fresh app (a reloaded page) with the same model restores the snapshot and reads only the new turn
    app2, info2 = await _load()
    assert info2["identity"] == info["identity"]
    r = json.loads(await app2.restore_state(blob))
    assert r["ok"] and r["context"] == r2["context"]
    got = await _chat(app2, msgs)
    assert got["text"] == want["text"] and got["prompt_tokens"] == want["prompt_tokens"]
    assert got["prompt_tokens"] < r2["context"] / 2

    # a snapshot from another context size is refused and changes nothing
    app3, _ = await _load(opts=json.dumps({"max_context": 64, "prefill_chunk": 16}))
    r = json.loads(await app3.restore_state(blob))
    assert not r["ok"] and r["error"]["kind"] == "snapshot"
    assert app3.context_used() == 0


async def test_reload_in_the_same_app_reuses_kernels_and_frees_the_old_model():
    app, _ = await _load()
    first = await _chat(app, [{"role": "user", "content": "hi"}])
    old = app.engine
    from rullama_py.webapp import _buffers_of

    bufs = _buffers_of(old)
    assert len(bufs) > 50
    n_kernels = len(app.device._kernels)
    r = json.loads(await app.load("path", str(TINY), OPTS))
    assert r["ok"] and len(app.device._kernels) == n_kernels  # nothing recompiled
    again = await _chat(app, [{"role": "user", "content": "hi"}])
    assert again["text"] == first["text"]


@pytest.mark.parametrize("case", ["corrupt", "missing-url", "refused", "device-limit", "busy-no-model"])
async def test_errors_are_plain_sentences(case, tmp_path):
    from range_server import RangeServer

    app = WebApp(Recorder())
    if case == "corrupt":
        bad = tmp_path / "bad.gguf"
        bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
        r = json.loads(await app.load("path", str(bad), OPTS))
        kind = "corrupt"
    elif case == "missing-url":
        with RangeServer({"/x.gguf": TINY}) as srv:
            r = json.loads(await app.load("url", srv.url("/missing.gguf"), OPTS))
        kind = "not-found"
    elif case == "refused":
        with RangeServer({}) as srv:
            url = srv.url("/x.gguf")
        r = json.loads(await app.load("url", url, OPTS))  # the server is gone: nothing listens there
        kind = "unreachable"
    elif case == "device-limit":
        r = json.loads(await app.load("path", str(TINY), json.dumps({"max_buffer_size": 4096})))
        kind = "device-limit"
    else:
        r = json.loads(await app.chat("[]", "{}"))
        kind = "no-model"
    assert r["ok"] is False and r["error"]["kind"] == kind, r
    msg = r["error"]["message"]
    assert msg[0].isupper() and msg.endswith(".") and "Error" not in msg  # a sentence, not a traceback
