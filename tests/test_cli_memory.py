"""The command line's memory modes (--text-only, --release-towers, with --ctx) and its notice for a GPU emulated
in software, against a stub engine and a stub device (no weights, no GPU)."""

from __future__ import annotations

import io
import sys

import pytest

from rullama_py import cli, engine as engine_mod, gpu
from rullama_py.engine import Stats, Token

LAVAPIPE = {"vendor": "llvmpipe", "architecture": "", "device": "llvmpipe (LLVM 15.0.6, 256 bits)",
            "description": "Mesa 22.3.6 (LLVM 15.0.6)", "adapter_type": "CPU", "backend_type": "Vulkan"}
SWIFTSHADER = {"vendor": "google", "architecture": "swiftshader", "device": "", "description": ""}
WARP = {"vendor": "microsoft", "device": "Microsoft Basic Render Driver", "adapter_type": "CPU"}
HARDWARE = {"vendor": "nvidia", "architecture": "hopper", "device": "NVIDIA H200", "description": "NVIDIA H200",
            "adapter_type": "DiscreteGPU"}


@pytest.mark.parametrize("info, name", [(LAVAPIPE, "llvmpipe"), (SWIFTSHADER, "swiftshader"),
                                        (WARP, "microsoft basic render driver"), (HARDWARE, None),
                                        ({"vendor": "someone", "adapter_type": "CPU"}, "software"), ({}, None)])
def test_software_gpus_are_recognised(info, name):
    assert gpu.software_gpu(info) == name


class StubAdapter:
    def __init__(self, info):
        self.info = info


class StubDevice:
    def __init__(self, info):
        self.adapter = StubAdapter(info)


@pytest.fixture()
def device_info(monkeypatch):
    """gpu.default_device() returns a stub whose adapter says what `device_info["info"]` holds."""
    state = {"info": LAVAPIPE, "opened": 0}

    async def default_device():
        state["opened"] += 1
        return StubDevice(state["info"])

    monkeypatch.setattr(gpu, "default_device", default_device)
    return state


class Terminal(io.StringIO):
    def isatty(self):
        return True


async def test_the_notice_is_one_line_on_a_terminal_and_nothing_in_a_log(device_info, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    dev = await cli._device_with_notice()
    assert isinstance(dev, StubDevice) and device_info["opened"] == 1
    [line] = sys.stderr.getvalue().splitlines()
    assert line.startswith("note: this GPU is emulated in software (llvmpipe, on the CPU): expect about 1 token/s")
    device_info["info"] = HARDWARE
    monkeypatch.setattr(sys, "stderr", Terminal())
    await cli._device_with_notice()
    assert sys.stderr.getvalue() == ""  # a real GPU: nothing to say
    device_info["info"] = LAVAPIPE
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file: its lines stay as they were
    await cli._device_with_notice()
    assert sys.stderr.getvalue() == ""


class StubEngine:
    """Enough of engine.Engine for generate and chat; `towers_left_out` as a text-only load sets it."""

    has_vision = False
    has_audio = False
    image_tokens = 280

    def __init__(self, towers_left_out=()):
        self.towers_left_out = towers_left_out
        self.stats = Stats()
        self.chat_template = None

    def cancel(self):
        pass

    def reset(self):
        pass

    async def generate(self, prompt, *, max_tokens=256):
        yield Token(1, "ok")
        self.stats = Stats(prompt_tokens=1, prompt_seconds=0.1, generated_tokens=1, generate_seconds=0.1,
                           finish_reason="length")

    async def chat(self, messages, *, max_tokens=512, **kwargs):
        yield Token(1, "ok")


@pytest.fixture()
def loads(monkeypatch, device_info):
    """Engine.load returns a StubEngine (text-only when asked); the list records each call's keyword arguments."""
    calls = []

    async def load(model, **kwargs):
        calls.append(kwargs)
        return StubEngine(("image", "audio") if kwargs.get("text_only") else ())

    monkeypatch.setattr(engine_mod.Engine, "load", staticmethod(load))
    return calls


def test_memory_flags_reach_the_engine(loads, capsys):
    assert cli.main(["generate", "m.gguf", "-p", "hi", "--ctx", "1024", "--text-only", "--release-towers"]) == 0
    [kw] = loads
    assert kw["text_only"] is True and kw["release_towers_after_turn"] is True and kw["max_context"] == 1024
    assert isinstance(kw["device"], StubDevice)  # opened first, for the notice
    assert cli.main(["generate", "m.gguf", "-p", "hi"]) == 0
    assert "text_only" not in loads[1] and "release_towers_after_turn" not in loads[1]


def test_text_only_with_an_image_is_refused_before_loading(loads, capsys, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG")
    rc = cli.main(["generate", "m.gguf", "-p", "hi", "--text-only", "--image", str(img)])
    assert rc == 1 and loads == []
    assert "--text-only leaves the vision and audio towers out, so --image and --audio cannot be used" in \
        capsys.readouterr().err


def test_chat_says_an_image_needs_a_load_without_text_only(loads, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"/image {tmp_path / 'a.png'}\n/exit\n"))
    assert cli.main(["chat", "m.gguf", "--text-only"]) == 0
    err = capsys.readouterr().err
    assert "error: the model was loaded with --text-only, so /image cannot be used; start again without " \
           "--text-only." in err
