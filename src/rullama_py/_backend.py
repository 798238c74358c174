"""The one place where the native and the browser GPU paths differ.

Natively the GPU API is wgpu-py. Inside Pyodide it is `webgpu_js`, the project's bridge that implements the
subset of wgpu-py's API that rullama-py uses over the browser's `navigator.gpu`. Everything else in the
package is written once against `api` and the three awaitable helpers below.
"""

from __future__ import annotations

import os
import sys

IN_BROWSER = sys.platform == "emscripten"


def _usable_runtime_dir(path: str) -> bool:
    return bool(path) and os.path.isabs(path) and os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def ensure_runtime_dir() -> str | None:
    """Give the process a valid XDG_RUNTIME_DIR when it has none (a login over ssh, a container, cron).

    The Vulkan drivers' window-system code asks libwayland for a display even for compute-only use, and
    libwayland prints "error: XDG_RUNTIME_DIR is invalid or not set in the environment." (once per driver)
    when the variable is unset or not an absolute path; users read that as our failure. With a valid
    directory the display lookup just finds no socket, silently. The directory is private to the user: a
    per-user folder under the temp dir, created 0700 and used only when it is ours and closed to others
    (else a fresh mkdtemp one). Returns the directory set, or None when the environment was already fine.
    Must run before the Vulkan loader is first touched; this module's import does it."""
    if _usable_runtime_dir(os.environ.get("XDG_RUNTIME_DIR", "")):
        return None
    import stat
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"rullama-runtime-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        path = None
    if path is not None:
        try:
            st = os.lstat(path)  # not a symlink someone else planted, ours, and closed to others
            ok = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            if ok and st.st_mode & 0o077:
                os.chmod(path, 0o700)
        except OSError:
            ok = False
        if not ok:
            path = None
    if path is None:
        path = tempfile.mkdtemp(prefix="rullama-runtime-")  # 0700, unique
    os.environ["XDG_RUNTIME_DIR"] = path
    return path


if IN_BROWSER:
    from . import webgpu_js as api
else:
    if os.name == "posix" and sys.platform != "darwin":  # Linux and the BSDs: Mesa's and others' Wayland code
        ensure_runtime_dir()
    import wgpu as api  # noqa: F401  (re-exported)


async def request_adapter(power_preference: str):
    if IN_BROWSER:
        return await api.gpu.request_adapter_async(power_preference=power_preference)
    # wgpu-py's sync call blocks for ~1 s natively; there is no event loop to keep responsive here.
    return api.gpu.request_adapter_sync(power_preference=power_preference)


async def request_device(adapter, required_features, required_limits):
    if IN_BROWSER:
        return await adapter.request_device_async(
            required_features=required_features, required_limits=required_limits
        )
    return adapter.request_device_sync(required_features=required_features, required_limits=required_limits)


async def create_pipeline(device, code: str, label: str, entry_point: str):
    """Compile WGSL into a compute pipeline; raises with the compiler's message. The browser reports shader
    errors asynchronously, so there we catch them in an error scope (and through the async pipeline
    creation's rejected promise) instead of letting them escape as uncaptured errors; wgpu-py raises them
    synchronously."""
    if IN_BROWSER:
        device.push_error_scope("validation")
        failure = None
        try:
            module = device.create_shader_module(code=code, label=label)
            pipeline = await device.create_compute_pipeline_async(
                layout="auto", compute={"module": module, "entry_point": entry_point}
            )
        except Exception as e:  # noqa: BLE001 - reported below, after the scope is closed
            failure = e
        scoped = await device.pop_error_scope_async()
        if scoped is not None:
            raise RuntimeError(scoped)
        if failure is not None:
            raise failure
        return pipeline
    module = device.create_shader_module(code=code, label=label)
    return device.create_compute_pipeline(layout="auto", compute={"module": module, "entry_point": entry_point})


async def map_read(buffer, offset: int, size: int, spin: bool = False) -> None:
    """Map a MAP_READ buffer once the GPU work submitted before has written it.

    Browser: the mapAsync promise. Natively, wgpu-py offers two waits and both cost a decode step dearly:
    its awaitable polls with a back-off of up to 10 ms, and map_sync waits for wgpu-py's poll thread, which
    blocks until the *latest* submission is done (so a step submitted behind this one is waited for too)
    and then wakes this thread (a futex wake and a GIL transfer). Instead we poll wgpu-native from this
    thread: with `spin` (a hardware GPU, decode) a non-blocking poll in a loop, which sees this buffer's
    submission finish while later ones still run and answers within microseconds; without it (a GPU
    emulated on the CPU, whose threads need both cores) one blocking poll, which runs the map callback here.
    wgpu-py is pinned (pyproject), so the private names used here are fixed; `GPUPromise._state` is
    "pending" until a callback has run."""
    if IN_BROWSER:
        await buffer.map_async(api.MapMode.READ, offset, size)
        return
    promise = buffer.map_async(api.MapMode.READ, offset, size)
    device = buffer._device
    if spin:
        while promise._state == "pending":
            device._poll(False)
    else:
        device._poll_wait()
    promise.sync_wait()


def prepare_dispatches(dispatches):
    """A recorded graph's dispatches in the form `encode_prepared` replays quickly.

    Browser: one JS array, encoded by one call into JS (see webgpu_js). Native: the raw wgpu-native handles.
    wgpu-py wraps every C call in Python error capture, and for three calls per dispatch that is the largest
    cost of a decode step. Replaying an identical, already-validated command list through the bare C
    functions skips it; gpu.Graph always encodes a graph's first run through the checked API."""
    if IN_BROWSER:
        return api.prepare_dispatches(dispatches)
    return [(d.pipeline._internal, d.bind_group._internal, *d.workgroups) for d in dispatches]


def encode_prepared(encoder, prepared) -> None:
    if IN_BROWSER:
        encoder.encode_prepared(prepared)
        return
    from wgpu.backends.wgpu_native._ffi import ffi, lib

    cpass = encoder.begin_compute_pass()
    h = cpass._internal
    set_pipeline, set_group = lib.wgpuComputePassEncoderSetPipeline, lib.wgpuComputePassEncoderSetBindGroup
    dispatch, null = lib.wgpuComputePassEncoderDispatchWorkgroups, ffi.NULL
    for pipeline, group, x, y, z in prepared:
        set_pipeline(h, pipeline)
        set_group(h, 0, group, 0, null)
        dispatch(h, x, y, z)
    cpass.end()


def device_error(device):
    """An error the device reported asynchronously (lost device, uncaptured validation error), or None.
    wgpu-py raises those at the call that caused them, so natively there is nothing pending."""
    if IN_BROWSER:
        return device.pending_error()
    return None


# ---------------------------------------------------------------------------------------------------------
# espeak-ng, for text to phonemes (rullama_py.g2p). The one difference between the runtimes is where espeak-ng
# runs; both make the same library calls as npm phonemizer 1.2.1 (which kokoro-js uses): espeak_Initialize
# (synchronous output), espeak_SetVoiceByName, espeak_SetPhonemeTrace(IPA) into a file, espeak_Synth with no
# flags (so "[[...]]" is plain text, not phoneme input), one call per text.
#   Browser: npm phonemizer 1.2.1, espeak-ng 1.52-dev compiled to JavaScript with English data only. The web
#   worker (web/worker.js) defines self.rullamaEspeakIpa(texts, voice) over its phonemize().
#   Native: Debian's libespeak-ng (1.51 on Debian 12) through ctypes, in a worker thread.
# Not through the espeak-ng program: it turns on "[[...]]" phoneme input, and one process per text (about 12 ms
# each; kokoro-js phonemizes every stretch between punctuation marks on its own) is 5 times slower.


class EspeakMissing(RuntimeError):
    """espeak-ng cannot be used here: no libespeak-ng natively, no phonemizer in the page."""


IPA_TIE = "^"  # with tie=True, joins the letters of one phoneme ("t^ʃ"), as misaki's espeak G2P asks


async def espeak_ipa(texts: list[str], voice: str, tie: bool = False) -> list[list[str]]:
    """espeak-ng's IPA for each of `texts` in `voice` (an espeak voice name: "en-us", "en", "es", ...).

    For each text, the lines espeak-ng writes, empty lines left out: one per clause it finds, phonemes without
    separators, words separated by a space, stress marks before the stressed syllable (what npm phonemizer's
    phonemize(text, voice) returns). tie=True joins the letters of multi-letter phonemes with IPA_TIE (native
    only: npm phonemizer has no such option). Raises EspeakMissing, or ValueError for a voice espeak lacks."""
    if IN_BROWSER:
        import js  # type: ignore[import-not-found]  (Pyodide only)
        from pyodide.ffi import to_js  # type: ignore[import-not-found]

        if tie:
            raise ValueError("the browser's espeak-ng (npm phonemizer) cannot tie phonemes")
        fn = getattr(js, "rullamaEspeakIpa", None)
        if fn is None:
            raise EspeakMissing("this page's worker provides no espeak-ng (self.rullamaEspeakIpa is missing)")
        result = await fn(to_js(list(texts)), voice)
        return [[str(line) for line in lines] for lines in result.to_py()]
    import asyncio

    return await asyncio.to_thread(_native_espeak.ipa, list(texts), voice, tie)


class _NativeEspeak:
    """libespeak-ng through ctypes. espeak-ng keeps its state in globals, so every use holds `lock`."""

    AUDIO_OUTPUT_SYNCHRONOUS = 2
    INITIALIZE_DONT_EXIT = 0x8000  # report a missing data folder instead of exiting the process
    POS_CHARACTER = 1
    PHONEMES_IPA = 0x02
    PHONEMES_TIE = 0x80  # bits 8-23 of the mode then hold the tie character

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.lib = None
        self.voice = None

    def _load(self):
        import ctypes
        import ctypes.util

        names = [n for n in ("libespeak-ng.so.1", ctypes.util.find_library("espeak-ng"), "libespeak-ng.dylib") if n]
        lib = None
        for name in names:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise EspeakMissing("libespeak-ng is not installed (Debian: apt-get install espeak-ng)")
        libc = ctypes.CDLL(None)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetPhonemeTrace.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        class Voice(ctypes.Structure):  # espeak_VOICE
            _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                        ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                        ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]

        self.Voice = Voice
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(Voice)]
        lib.espeak_Info.argtypes = [ctypes.c_void_p]
        lib.espeak_Info.restype = ctypes.c_char_p
        libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
        libc.open_memstream.restype = ctypes.c_void_p
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.free.argtypes = [ctypes.c_void_p]
        if lib.espeak_Initialize(self.AUDIO_OUTPUT_SYNCHRONOUS, 100, None, self.INITIALIZE_DONT_EXIT) <= 0:
            raise EspeakMissing("libespeak-ng is installed but cannot start (its espeak-ng-data is missing)")
        # Synthesis still runs (the trace is written while speaking); the samples go to a callback that
        # drops them. espeak-ng 1.51 would call a NULL callback in synchronous mode.
        self._drop_audio = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)(
            lambda samples, n, events: 0)
        lib.espeak_SetSynthCallback(self._drop_audio)
        self.ctypes, self.libc, self.lib = ctypes, libc, lib

    def version(self) -> str:
        with self.lock:
            if self.lib is None:
                self._load()
            return self.lib.espeak_Info(None).decode()

    def ipa(self, texts: list[str], voice: str, tie: bool) -> list[list[str]]:
        with self.lock:
            if self.lib is None:
                self._load()
            ctypes, lib, libc = self.ctypes, self.lib, self.libc
            if voice != self.voice:
                self.voice = None
                # By voice file name ("en-us", "en", "es"), else by language ("fr-fr" is the language of
                # the voice file "fr"), as the espeak-ng program's -v does.
                if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    props = self.Voice(languages=voice.encode())
                    if lib.espeak_SetVoiceByProperties(ctypes.byref(props)) != 0:
                        raise ValueError(f"espeak-ng has no voice {voice!r}")
                self.voice = voice
            mode = self.PHONEMES_IPA | ((self.PHONEMES_TIE | (ord(IPA_TIE) << 8)) if tie else 0)
            out = []
            for text in texts:
                buf, size = ctypes.c_char_p(), ctypes.c_size_t()
                stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
                if not stream:
                    raise MemoryError("open_memstream failed")
                data = text.encode("utf-8", "replace")
                try:
                    lib.espeak_SetPhonemeTrace(mode, stream)
                    lib.espeak_Synth(data, len(data) + 1, 0, self.POS_CHARACTER, 0, 0, None, None)
                finally:
                    lib.espeak_SetPhonemeTrace(0, None)
                    libc.fclose(stream)  # sets buf and size
                raw = ctypes.string_at(buf, size.value).decode("utf-8", "replace")
                libc.free(buf)
                out.append([line for line in raw.split("\n") if line])
            return out


_native_espeak = _NativeEspeak()


def espeak_version() -> str:
    """The espeak-ng version that espeak_ipa uses: libespeak-ng's natively ("1.51"); in the browser, the
    version npm phonemizer 1.2.1 compiled in (it does not report one)."""
    if IN_BROWSER:
        return "1.52-dev (npm phonemizer 1.2.1)"
    return _native_espeak.version()
