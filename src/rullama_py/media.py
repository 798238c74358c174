"""Image decoding and Gemma 4 image preprocessing, the same natively and in Pyodide (Pillow + numpy only).

    rgb = decode_image(data, name="photo.jpg")        # uint8 [H, W, 3], upright, alpha composited on white
    img = prepare_image(data, budget=280)             # PreparedImage: patches for the vision tower

`prepare_image` reproduces transformers' Gemma 4 image processor (`Gemma4ImageProcessorPil`) step by step:

1. Decode with Pillow (PNG, JPEG, WebP, BMP, GIF's first frame) and apply the EXIF orientation
   (`ImageOps.exif_transpose`, as transformers' `load_image` does).
2. To RGB as transformers' `convert_to_rgb` does: an image with an alpha band or a `transparency` entry is
   composited onto opaque white (`Image.alpha_composite`), anything else goes through `convert("RGB")`.
   One deliberate difference: 16-bit greyscale (Pillow mode I;16, or I in older Pillow) keeps its high
   byte, as Pillow itself does for 16-bit RGB; `convert("RGB")` would clip every value above 255 to white.
3. Resize to `fit_to_budget(h, w)` with Pillow's bicubic filter on the uint8 RGB image (no reducing_gap),
   skipped when the size is already right; transformers' PIL backend does exactly this.
4. Rescale to [0, 1] and, folded in here, the model's own `2 * (x - 0.5)`: patches hold `2 * v / 255 - 1`.
5. Cut into `patch_size` squares in row-major order. Each patch's columns are in (channel, row, col) order,
   which is what the GGUF's `v.patch_embd.weight` multiplies. transformers' `pixel_values` are in
   (row, col, channel) order: the same numbers, permuted.

Every failure is a `MediaError` whose message is one plain sentence for the user; no Pillow exception or
warning escapes. The pixel count is checked from the header before any pixel is decoded.

Audio (numpy; scipy only to resample, imported on first use):

    wav, rate = decode_wav(data, name="talk.wav")     # float32 [n] mono, the file's own rate
    x = resample(wav, rate)                           # float32 [m] at 16 kHz (scipy.signal.resample_poly)
    feats = log_mel(x)                                # float32 [frames, 128]
    pieces = prepare_audio(data)                      # [PreparedAudio], one per 30 s piece
    target = prepare_voice_target(samples, rate)      # VoiceTarget: a voice-clone target, trimmed, 24 kHz

`log_mel` is transformers' `Gemma4AudioFeatureExtractor` step by step: 160 zeros in front (semicausal
padding), frames of 320 samples every 160, the float32 waveform times the float32 periodic Hann window
(rounded to float32, as transformers' float32 product is), a float64 FFT of 512, magnitude, 128 HTK mel
filters over 0-8000 Hz (no normalisation), log(mel + 0.001). transformers pads the waveform to a multiple of
128 samples and zeroes the frames that reach into that padding (`input_features_mask` False); those frames
are left out here, so `log_mel` returns exactly its unmasked frames, (n - 161) // 160 + 1 of them for n
samples. The tower masks the padded frames before each convolution, so leaving them out changes nothing.
transformers cuts audio at 30 s; `prepare_audio` instead splits it into 30 s pieces, each one its own audio
block for the tower (its own padding at the start), and drops a last piece too short to make one frame (at
most 10 ms).

WAV files are parsed here (the stdlib `wave` module rejects float and extensible files): PCM 8 (unsigned),
16, 24 and 32 bits, IEEE float 32 and 64, G.711 mu-law and A-law, WAVE_FORMAT_EXTENSIBLE with any of these
as its sub-format, any channel count (averaged to mono), any rate from 1 kHz to 768 kHz; chunks other than
`fmt ` and `data` are skipped, odd-sized chunks have their pad byte. Integer samples are scaled by the full
scale of their container (int16 / 32768, ...), so they lie in [-1, 1); float samples are kept as they are
(a float file may go past 1) but must be finite. A `data` chunk that claims more bytes than the file holds
(an interrupted recording, a stream written without a final size) is read as far as the file goes, in whole
frames, without a word, as libsndfile and transformers-style loaders do. Compressed codecs inside a WAV
(ADPCM, MP3 in WAV, GSM, ...) are refused by name. The length is checked from the header against
`MAX_AUDIO_SECONDS` before any sample is converted.

`prepare_voice_target` readies a recording as the target of voice cloning (Kokoro speaks at 24 kHz): the
silence around the voice trimmed, at most a minute kept, resampled to 24 kHz, scaled to a standard level;
silent, too short (under 3 s of voice) or clipped recordings are refused with a `VoiceTargetError` (a
MediaError) that says what to do.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)

# Larger than any camera photo (a 50 MP sensor makes 8192 x 6144), far smaller than a decompression bomb.
MAX_IMAGE_PIXELS = 100_000_000

# Pillow format ids we open; nothing else is even tried (JPEG covers MPO, the multi-picture JPEG of cameras).
_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_SUPPORTED = "PNG, JPEG, WebP, BMP or GIF"


class MediaError(ValueError):
    """An image or an audio clip could not be used; the message is a plain sentence naming the problem, fit to
    show a user."""


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the vision tower.

    patches: float32 [n_patches, 3 * p * p], values 2 * v / 255 - 1 in [-1, 1]; the columns of a patch are in
        (channel, row, col) order, patches in row-major order (index = py * pw + px).
    positions: uint32 [n_patches, 2], (px, py) of each patch.
    grid: (pw, ph), the patch grid.
    n_soft: soft tokens, n_patches / pooling**2.
    size: (height, width) after resizing; original_size: (height, width) as decoded (after EXIF orientation).
    """

    patches: np.ndarray
    positions: np.ndarray
    grid: tuple[int, int]
    n_soft: int
    size: tuple[int, int]
    original_size: tuple[int, int]


def _check_budget(budget) -> None:
    if budget not in SOFT_TOKEN_BUDGETS:
        choices = ", ".join(str(b) for b in SOFT_TOKEN_BUDGETS)
        raise MediaError(f"The image token budget {budget!r} is not supported; choose one of {choices}.")


def fit_to_budget(height: int, width: int, *, budget: int = 280, patch_size: int = 16, pooling: int = 3) -> tuple[int, int]:
    """(height, width) to resize an image to, keeping its aspect ratio, transformers' rule
    (`get_aspect_ratio_preserving_size`): the largest size with both sides multiples of pooling * patch_size
    that holds at most budget * pooling**2 patches. A side that would round to 0 (a very wide or tall image)
    becomes one pooling cell and the other side floor(long / short) cells, at most budget cells."""
    _check_budget(budget)
    if patch_size < 1 or pooling < 1:
        raise ValueError(f"patch_size and pooling must be positive, not {patch_size} and {pooling}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise MediaError(f"An image of {width} x {height} pixels has no pixels to use.")
    max_patches = budget * pooling**2
    target_px = max_patches * patch_size**2
    factor = math.sqrt(target_px / (height * width))
    side = pooling * patch_size
    th = int(math.floor(factor * height / side)) * side
    tw = int(math.floor(factor * width / side)) * side
    if th == 0 and tw == 0:  # cannot happen for the budgets above; transformers raises here too
        raise MediaError(f"An image of {width} x {height} pixels cannot be fitted to {budget} image tokens.")
    max_side = (max_patches // pooling**2) * side
    if th == 0:
        th = side
        tw = min(int(math.floor(width / height)) * side, max_side)
    elif tw == 0:
        tw = side
        th = min(int(math.floor(height / width)) * side, max_side)
    return th, tw


def _sniff(data: bytes) -> str | None:
    """A name for recognisable files we do not decode (for a better sentence than 'not an image')."""
    head = bytes(data[:1024])
    if head[:2] == b"\x1f\x8b":
        return "a compressed (gzip) file, perhaps an SVGZ image"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    low = text[:1024].lower()
    if low.startswith(b"<svg") or (low.startswith((b"<?xml", b"<!doctype svg", b"<!--")) and b"<svg" in low):
        return "svg"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "a HEIC image"
        if brand in (b"avif", b"avis"):
            return "an AVIF image"
        return "a video or MP4 file"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "a TIFF image"
    if head[:5] == b"%PDF-":
        return "a PDF document"
    if head[:4] == b"PK\x03\x04":
        return "a ZIP archive"
    if head[:4] == b"RIFF" and head[8:12] != b"WEBP":
        return "a RIFF file (audio or video)"
    for cut in range(4):  # the first 1 KiB may end inside a multi-byte character
        try:
            head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if all(c >= 32 or c in (9, 10, 12, 13) for c in head):
            return "text"
        break
    return None


def _unsupported(name: str, data: bytes) -> MediaError:
    kind = _sniff(data)
    if kind == "svg" or (kind in ("text", "a compressed (gzip) file, perhaps an SVGZ image")
                         and name.lower().endswith((".svg", ".svgz"))):
        return MediaError(f"{name} is an SVG image, and SVG is not supported: convert it to PNG and try again.")
    if kind == "text":
        return MediaError(f"{name} is not an image: it contains text. Use a {_SUPPORTED} image.")
    if kind is not None:
        return MediaError(f"{name} is {kind}, not an image this app can read. Use a {_SUPPORTED} image.")
    return MediaError(f"{name} is not a {_SUPPORTED} image, or it is damaged.")


def _too_large(name: str, w: int | None = None, h: int | None = None) -> MediaError:
    limit = f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels"
    if w is None:
        return MediaError(f"{name} is too large: it has more than {limit}. Use a smaller image.")
    return MediaError(f"{name} is too large: {w} x {h} pixels is more than {limit}. Use a smaller image.")


def _open_rgb(data: bytes, name: str):
    """The decoded, upright RGB Pillow image, or MediaError."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"image data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) == 0:
        raise MediaError(f"{name} is empty (0 bytes).")
    with warnings.catch_warnings():
        # Pillow warns above its own limit (89.5 MP) and raises above twice that; ours is the check that counts.
        # Its other warnings (a corrupt EXIF block, say) are no business of the user's either.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
        if _sniff(data) == "svg":
            raise _unsupported(name, data)
        try:
            im = Image.open(io.BytesIO(data), formats=_FORMATS)  # reads the header only
        except Image.DecompressionBombError:
            raise _too_large(name) from None
        except UnidentifiedImageError:
            raise _unsupported(name, data) from None
        except Exception:  # noqa: BLE001 - a header Pillow recognised but could not parse
            raise MediaError(f"{name} is damaged or incomplete: it could not be decoded.") from None
        w, h = im.size
        if w < 1 or h < 1:
            raise MediaError(f"{name} has no pixels ({w} x {h}).")
        if w * h > MAX_IMAGE_PIXELS:
            raise _too_large(name, w, h)
        try:
            im.load()  # the first frame of an animation
        except Image.DecompressionBombError:
            raise _too_large(name) from None
        except MemoryError:
            raise MediaError(f"{name} is too large to decode in the memory available.") from None
        except Exception:  # noqa: BLE001 - truncated data, bad compressed stream, broken chunk, ...
            raise MediaError(f"{name} is damaged or incomplete: it could not be decoded.") from None
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a broken EXIF block: keep the image as stored
            pass
        try:
            return _to_rgb(im)
        except Exception:  # noqa: BLE001
            raise MediaError(f"{name} uses a colour format that cannot be converted to RGB.") from None


def _to_rgb(im):
    """transformers' convert_to_rgb: alpha (a band or a `transparency` entry) onto white, else convert("RGB")."""
    from PIL import Image

    if im.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit grey (I;16 in current Pillow, I in older ones such as Pyodide 0.27.7's 10.2): keep the high byte, as
        # Pillow does for 16-bit RGB. convert("RGB") would clip everything above 255 to white.
        a = np.clip(np.asarray(im).astype(np.int64), 0, 65535)
        im = Image.fromarray((a >> 8).astype(np.uint8))
    if "A" in im.getbands() or im.info.get("transparency") is not None:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode PNG, JPEG, WebP, BMP or GIF (first frame) bytes to uint8 [H, W, 3] RGB, upright (EXIF orientation
    applied), with transparency composited onto white. `name` is used in error sentences. Raises MediaError."""
    return _rgb_array(_open_rgb(data, name))


def _rgb_array(im) -> np.ndarray:
    a = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(a.reshape(im.size[1], im.size[0], 3))


def patchify(rgb: np.ndarray, patch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [H, W, 3] with H, W multiples of patch_size -> (float32 patches [n, 3*p*p] of 2 v / 255 - 1 in
    (channel, row, col) column order, uint32 positions [n, 2] of (px, py)), patches in row-major order."""
    h, w, c = rgb.shape
    p = patch_size
    ph, pw = h // p, w // p
    x = rgb.reshape(ph, p, pw, p, c).transpose(0, 2, 4, 1, 3).reshape(ph * pw, c * p * p)
    patches = (x.astype(np.float64) * (2.0 / 255.0) - 1.0).astype(np.float32)
    py, px = np.divmod(np.arange(ph * pw, dtype=np.uint32), np.uint32(pw))
    positions = np.stack([px, py], axis=1).astype(np.uint32)
    return patches, positions


def prepare_image(data: bytes, *, budget: int = 280, patch_size: int = 16, pooling: int = 3, name: str = "image") -> PreparedImage:
    """Decode `data` and preprocess it exactly as transformers' Gemma 4 image processor does (see the module
    docstring), with the model's 2x - 1 folded in. Raises MediaError."""
    from PIL import Image

    _check_budget(budget)
    im = _open_rgb(data, name)
    w0, h0 = im.size
    th, tw = fit_to_budget(h0, w0, budget=budget, patch_size=patch_size, pooling=pooling)
    if (th, tw) != (h0, w0):
        im = im.resize((tw, th), resample=Image.Resampling.BICUBIC)
    patches, positions = patchify(_rgb_array(im), patch_size)
    pw, ph = tw // patch_size, th // patch_size
    return PreparedImage(
        patches=patches,
        positions=positions,
        grid=(pw, ph),
        n_soft=patches.shape[0] // pooling**2,
        size=(th, tw),
        original_size=(h0, w0),
    )


# ----------------------------------------------------------------------------------------------------------
# Audio

SAMPLE_RATE = 16000
MAX_AUDIO_SECONDS = 600.0  # ten minutes: 20 pieces of 30 s, 15000 soft tokens
CHUNK_SECONDS = 30  # the model takes at most 30 s (750 soft tokens) per audio block
MIN_SOURCE_RATE, MAX_SOURCE_RATE = 1000, 768_000

N_MELS = 128
_FRAME, _HOP, _FFT = 320, 160, 512  # 20 ms, 10 ms, at 16 kHz
_MEL_FLOOR = 1e-3

_WAVE_PCM, _WAVE_FLOAT, _WAVE_ALAW, _WAVE_MULAW, _WAVE_EXTENSIBLE = 0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE
# KSDATAFORMAT_SUBTYPE_*: the format code in the first two bytes, then this fixed tail.
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_CODECS = {  # compressed formats found inside WAV files, named for the error sentence
    0x0002: "Microsoft ADPCM", 0x0011: "IMA ADPCM", 0x0010: "OKI ADPCM", 0x0014: "G.723 ADPCM",
    0x0040: "G.721 ADPCM", 0x0064: "G.726 ADPCM", 0x0045: "G.726 ADPCM", 0x0031: "GSM 6.10",
    0x0022: "TrueSpeech", 0x0050: "MPEG audio (MP2 in WAV)", 0x0055: "MP3 (MP3 in WAV)",
    0x0161: "Windows Media Audio", 0x0162: "Windows Media Audio", 0x0163: "Windows Media Audio",
    0x00FF: "AAC", 0x1610: "AAC", 0xA106: "AAC", 0x2000: "AC-3", 0x0092: "AC-3", 0x2001: "DTS",
    0xF1AC: "FLAC", 0x674F: "Vorbis", 0x6750: "Vorbis", 0x6751: "Vorbis", 0x676F: "Vorbis", 0x6770: "Vorbis",
    0x6771: "Vorbis", 0x704F: "Opus",
}
_BROWSER_FORMATS = "MP3, OGG, M4A and other compressed audio"


@dataclass(frozen=True)
class PreparedAudio:
    """One piece of audio (at most CHUNK_SECONDS) ready for the audio tower.

    features: float32 [frames, 128] log-mel features, transformers' unmasked frames.
    n_soft: soft tokens the tower makes of it, audio_soft_tokens(frames).
    seconds: the piece's length in seconds (samples / 16000).
    """

    features: np.ndarray
    n_soft: int
    seconds: float


def audio_frames(n_samples: int) -> int:
    """Feature frames of n 16 kHz samples: (n + 160 - 321) // 160 + 1 (transformers' unfold), 0 below 161."""
    return max(0, (int(n_samples) + _FRAME // 2 - (_FRAME + 1)) // _HOP + 1)


def audio_soft_tokens(frames: int) -> int:
    """Soft tokens the audio tower makes of `frames` feature frames: two convolutions of kernel 3, stride 2,
    padding 1, each (t + 2 - 3) // 2 + 1. 1 s (99 frames) gives 25, 30 s (2999 frames) 750."""
    t = max(0, int(frames))
    for _ in range(2):
        t = (t + 2 - 3) // 2 + 1 if t > 0 else 0
    return t


def _duration(seconds: float) -> str:
    """'6 ms', '2.5 s', '45 s', '2 min 5 s', '1 h 2 min'."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.3g} s" if seconds < 10 else f"{seconds:.0f} s"
    total = int(round(seconds))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {s} s" if s else f"{m} min"


def _too_long(name: str, seconds: float) -> MediaError:
    clip, limit = _duration(seconds), _duration(MAX_AUDIO_SECONDS)
    if clip == limit:  # just over the limit, rounded to it
        clip = f"{seconds:.1f} s"
    return MediaError(f"{name} is too long: it holds {clip} of audio, and at most {limit} is accepted. "
                      f"Use a shorter clip.")


def _sniff_audio(head: bytes) -> tuple[str, bool] | None:
    """(what the file is, whether the web app's browser decodes it) for files that are not WAV, or None."""
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0):
        if len(head) > 1 and (head[1] & 0xF6) == 0xF0:
            return "an AAC (ADTS) file", True
        return "an MP3 file", True
    if head[:4] == b"OggS":
        return "an OGG file", True
    if head[4:8] == b"ftyp":
        return "an M4A or MP4 file", True
    if head[:4] == b"fLaC":
        return "a FLAC file", True
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "a WebM or Matroska file", True
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "an AIFF file", False
    if head[:5] == b"#!AMR":
        return "an AMR file", False
    return None


def _not_wav(name: str, data: bytes) -> MediaError:
    head = bytes(data[:1024])
    known = _sniff_audio(head)
    if known is not None:
        what, browser = known
        if browser:
            return MediaError(f"{name} is {what}: the web app decodes {_BROWSER_FORMATS} in the browser, and the "
                              f"command line takes WAV files. Convert it to WAV to use it here.")
        return MediaError(f"{name} is {what}, which is not read here: convert it to WAV.")
    if head[:4] == b"RIFF" and head[8:12] != b"WAVE":
        return MediaError(f"{name} is a RIFF file but not WAV audio (it holds {head[8:12].decode('latin-1')!r} data).")
    kind = _sniff(head)
    if kind == "text":
        return MediaError(f"{name} is not audio: it contains text. Use a WAV file.")
    if kind is not None and kind != "svg":
        return MediaError(f"{name} is {kind}, not audio. Use a WAV file.")
    if kind == "svg" or head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff":
        return MediaError(f"{name} is an image, not audio. Use a WAV file.")
    return MediaError(f"{name} is not a WAV file, or it is damaged.")


@dataclass(frozen=True)
class _WavInfo:
    fmt: int  # _WAVE_PCM, _WAVE_FLOAT, _WAVE_ALAW or _WAVE_MULAW (the sub-format for an extensible file)
    channels: int
    rate: int
    width: int  # bytes per sample of one channel (the container size)
    offset: int  # where the samples start
    frames: int  # whole frames present (the data chunk's size, cut to what the file holds)


def _parse_wav(data: bytes, name: str) -> _WavInfo:
    """The header of a RIFF/WAVE file, checked; no sample is read. Raises MediaError."""
    n = len(data)
    if n == 0:
        raise MediaError(f"{name} is empty (0 bytes).")
    if data[:4] == b"RIFX":
        raise MediaError(f"{name} is a big-endian (RIFX) WAV file, which is not supported: convert it to a usual WAV file.")
    if data[:4] == b"RF64":
        raise MediaError(f"{name} is an RF64 WAV file (for recordings over 4 GB), which is not supported.")
    if data[:4] != b"RIFF" or (n >= 12 and data[8:12] != b"WAVE"):
        raise _not_wav(name, data)
    if n < 12:
        raise MediaError(f"{name} is damaged or incomplete: its WAV header is cut short.")
    pos, fmt_chunk, data_at, data_size = 12, None, None, 0
    while pos + 8 <= n:
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"fmt ":
            if size < 16 or body + 16 > n:
                raise MediaError(f"{name} is damaged or incomplete: its WAV format chunk is cut short.")
            fmt_chunk = bytes(data[body:body + min(size, n - body)])
        elif cid == b"data":
            data_at, data_size = body, size
            if fmt_chunk is not None or body + size > n:
                break  # the samples; a data chunk that runs past the end is the last thing in the file
        pos = body + size + (size & 1)
    cut = pos != n or n < 8 + struct.unpack_from("<I", data, 4)[0]  # the walk or the RIFF size runs past the end
    if fmt_chunk is None:
        if cut:
            raise MediaError(f"{name} is damaged or incomplete: its WAV header is cut short.")
        raise MediaError(f"{name} is damaged: it has no WAV format chunk.")
    if data_at is None:
        if cut:
            raise MediaError(f"{name} is damaged or incomplete: it is cut short before its audio data.")
        raise MediaError(f"{name} is damaged: it has no audio data (no WAV data chunk).")

    tag, channels, rate, _byte_rate, align, bits = struct.unpack_from("<HHIIHH", fmt_chunk, 0)
    fmt = tag
    if tag == _WAVE_EXTENSIBLE:
        if len(fmt_chunk) < 40:
            raise MediaError(f"{name} is damaged or incomplete: its extensible WAV format chunk is cut short.")
        guid = fmt_chunk[24:40]
        if guid[2:] != _GUID_TAIL:
            raise MediaError(f"{name} uses a WAVE_FORMAT_EXTENSIBLE sub-format that is not supported "
                             f"(GUID {guid.hex()}): use an uncompressed (PCM) WAV file.")
        fmt = struct.unpack_from("<H", guid, 0)[0]
    if fmt not in (_WAVE_PCM, _WAVE_FLOAT, _WAVE_ALAW, _WAVE_MULAW):
        codec = _CODECS.get(fmt, f"the codec with format code 0x{fmt:04X}")
        raise MediaError(f"{name} is a WAV file compressed with {codec}, which is not supported: "
                         f"use an uncompressed (PCM) WAV file.")
    if channels == 0:
        raise MediaError(f"{name} is damaged: its WAV header says it has 0 channels.")
    if rate == 0:
        raise MediaError(f"{name} is damaged: its WAV header gives a sample rate of 0 Hz.")
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise MediaError(f"{name} has a sample rate of {rate} Hz; rates from {MIN_SOURCE_RATE} Hz to "
                         f"{MAX_SOURCE_RATE} Hz are supported.")
    if align == 0 or align % channels:
        raise MediaError(f"{name} is damaged: its WAV header gives a block size of {align} bytes for "
                         f"{channels} channels.")
    width = align // channels
    ok = {_WAVE_PCM: (1, 2, 3, 4), _WAVE_FLOAT: (4, 8), _WAVE_ALAW: (1,), _WAVE_MULAW: (1,)}[fmt]
    kind = {_WAVE_PCM: "integer PCM", _WAVE_FLOAT: "floating-point", _WAVE_ALAW: "A-law", _WAVE_MULAW: "mu-law"}[fmt]
    if width not in ok or not 0 < bits <= 8 * width:
        raise MediaError(f"{name} holds {bits}-bit {kind} samples in {8 * width}-bit slots, which is not supported: "
                         f"use 8, 16, 24 or 32-bit PCM or 32 or 64-bit float.")
    if fmt == _WAVE_FLOAT and bits != 8 * width:
        raise MediaError(f"{name} is damaged: its WAV header gives {bits}-bit floats in {8 * width}-bit slots.")
    frames = min(data_size, n - data_at) // align
    seconds = frames / rate
    if seconds > MAX_AUDIO_SECONDS:
        raise _too_long(name, seconds)
    if frames == 0:
        if data_size == 0:
            raise MediaError(f"{name} has no audio: its data chunk is empty.")
        raise MediaError(f"{name} is damaged or incomplete: its audio data is cut short before the first sample.")
    return _WavInfo(fmt, channels, rate, width, data_at, frames)


@lru_cache(maxsize=2)
def _g711_table(mu: bool) -> np.ndarray:
    """float32 [256]: G.711 mu-law or A-law byte -> linear sample / 32768 (ITU-T G.711 decoding)."""
    b = np.arange(256)
    if mu:
        u = ~b & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        v = np.where(u & 0x80, 0x84 - t, t - 0x84)
    else:
        a = b ^ 0x55
        seg = (a & 0x70) >> 4
        t = (a & 0x0F) << 4
        t = np.where(seg == 0, t + 8, np.where(seg == 1, t + 0x108, (t + 0x108) << np.maximum(seg - 1, 0)))
        v = np.where(a & 0x80, t, -t)
    return (v.astype(np.float64) / 32768.0).astype(np.float32)


def _samples(raw: np.ndarray, info: _WavInfo) -> np.ndarray:
    """uint8 [frames * align] -> float64 [frames, channels]."""
    w, c = info.width, info.channels
    if info.fmt == _WAVE_FLOAT:
        x = raw.view("<f4" if w == 4 else "<f8").astype(np.float64)
    elif info.fmt in (_WAVE_ALAW, _WAVE_MULAW):
        x = _g711_table(info.fmt == _WAVE_MULAW)[raw].astype(np.float64)
    elif w == 1:
        x = (raw.astype(np.float64) - 128.0) / 128.0
    elif w == 2:
        x = raw.view("<i2") / 32768.0
    elif w == 3:
        b = raw.reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = ((v << 8) >> 8) / 8388608.0  # sign-extend the 24-bit value
    else:
        x = raw.view("<i4") / 2147483648.0
    return x.reshape(-1, c)


def decode_wav(data: bytes, name: str = "audio") -> tuple[np.ndarray, int]:
    """Decode a WAV file (see the module docstring for what is read) to (float32 [n] mono, sample rate).
    Channels are averaged. `name` is used in error sentences. Raises MediaError."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"audio data must be bytes, not {type(data).__name__}")
    data = memoryview(data).cast("B")
    info = _parse_wav(data, name)
    out = np.empty(info.frames, np.float32)
    align = info.width * info.channels
    step = max(1, (1 << 22) // align)  # frames per block: about 4 MiB of file at a time
    buf = np.frombuffer(data, np.uint8, count=info.frames * align, offset=info.offset)
    for f0 in range(0, info.frames, step):
        f1 = min(info.frames, f0 + step)
        x = _samples(buf[f0 * align:f1 * align], info)
        out[f0:f1] = x.mean(axis=1) if info.channels > 1 else x[:, 0]
    if info.fmt == _WAVE_FLOAT and not np.isfinite(out).all():
        raise MediaError(f"{name} is damaged: some of its samples are not numbers (NaN or infinity).")
    return out, info.rate


def encode_wav(pcm, rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of float samples in [-1, 1] (values outside are clipped): what `rullama say`
    writes and every player reads."""
    x = np.clip(np.nan_to_num(np.asarray(pcm, np.float32).reshape(-1)), -1.0, 1.0)
    data = np.round(x * 32767.0).astype("<i2").tobytes()
    header = struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, 1, 1, int(rate),
                         int(rate) * 2, 2, 16, b"data", len(data))
    return header + data


async def load_resampler() -> None:
    """Make scipy importable for `resample`. In Pyodide, scipy is a package of the distribution (13.5 MB, with
    openblas 6.1 MB) that must be loaded before Python can import it: this awaits `pyodide.loadPackage("scipy")`
    (a no-op once loaded; seconds the first time). Natively scipy is a dependency, and this does nothing.
    Only audio that is not already at 16 kHz needs it."""
    import importlib.util
    import sys

    if sys.platform == "emscripten" and importlib.util.find_spec("scipy") is None:
        import pyodide_js  # noqa: PLC0415 - exists only inside Pyodide

        await pyodide_js.loadPackage("scipy")


def resample(x: np.ndarray, rate: int, to: int = SAMPLE_RATE) -> np.ndarray:
    """float32 `x` at `rate` Hz resampled to `to` Hz with scipy.signal.resample_poly (a polyphase FIR filter,
    Kaiser window with beta 5, up/down = to/rate in lowest terms); ceil(n * to / rate) samples. The same rate
    returns a float32 copy without importing scipy. In Pyodide, `await load_resampler()` first."""
    rate, to = int(rate), int(to)
    if rate < 1 or to < 1:
        raise ValueError(f"sample rates must be positive, not {rate} and {to}")
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"resample takes mono audio, a 1-D array, not shape {x.shape}")
    if rate == to or x.size == 0:
        return np.array(x, dtype=np.float32)
    try:
        from scipy.signal import resample_poly  # scipy is large: imported the first time audio needs resampling
    except ImportError:  # in Pyodide: the app did not await load_resampler()
        raise RuntimeError("scipy is not loaded: await rullama_py.media.load_resampler() before resampling audio") from None

    g = math.gcd(rate, to)
    y = resample_poly(x.astype(np.float64), to // g, rate // g)
    return y.astype(np.float32)


@lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    """float64 [257, 128]: transformers' mel_filter_bank(257, 128, 0, 8000, 16000, norm=None, mel_scale="htk"),
    triangles in Hz between HTK-mel-spaced edges over FFT bins at linspace(0, 8000, 257)."""
    mel_max = 2595.0 * np.log10(1.0 + 8000.0 / 700.0)
    edges = 700.0 * (np.power(10.0, np.linspace(0.0, mel_max, N_MELS + 2) / 2595.0) - 1.0)
    bins = np.linspace(0, SAMPLE_RATE // 2, _FFT // 2 + 1)
    width = np.diff(edges)
    slopes = edges[None, :] - bins[:, None]
    down = -slopes[:, :-2] / width[:-1]
    up = slopes[:, 2:] / width[1:]
    return np.maximum(0.0, np.minimum(down, up))


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    """float32 [320]: the periodic Hann window, 0.5 - 0.5 cos(2 pi n / 320), as transformers rounds it."""
    return np.hanning(_FRAME + 1)[:-1].astype(np.float32)


def log_mel(wav: np.ndarray) -> np.ndarray:
    """float32 [frames, 128] log-mel features of 16 kHz mono `wav`, transformers' Gemma4AudioFeatureExtractor
    (see the module docstring); frames = audio_frames(len(wav)), 0 rows for fewer than 161 samples."""
    x = np.asarray(wav)
    if x.ndim != 1:
        raise ValueError(f"log_mel takes mono audio, a 1-D array, not shape {x.shape}")
    n_frames = audio_frames(x.size)
    out = np.empty((n_frames, N_MELS), np.float32)
    if n_frames == 0:
        return out
    padded = np.concatenate([np.zeros(_FRAME // 2, np.float32), x.astype(np.float32, copy=False)])
    frames = np.lib.stride_tricks.as_strided(padded, shape=(n_frames, _FRAME),
                                             strides=(padded.strides[0] * _HOP, padded.strides[0]), writeable=False)
    win, mel = _window(), _mel_filters()
    block = 2048  # frames at a time: about 20 MB of intermediates
    for f0 in range(0, n_frames, block):
        f = frames[f0:f0 + block] * win  # float32 products, as transformers computes them
        spec = np.abs(np.fft.rfft(f.astype(np.float64), n=_FFT, axis=-1))
        out[f0:f0 + block] = np.log(spec @ mel + _MEL_FLOOR)
    return out


def _as_16k(data, name: str) -> np.ndarray:
    if isinstance(data, np.ndarray):
        if data.ndim != 1 or data.dtype.kind != "f":
            raise TypeError(f"audio samples must be a 1-D float array (mono, 16 kHz), not {data.dtype} {data.shape}")
        if data.size == 0:
            raise MediaError(f"{name} has no audio: it holds no samples.")
        if data.size / SAMPLE_RATE > MAX_AUDIO_SECONDS:
            raise _too_long(name, data.size / SAMPLE_RATE)
        x = data.astype(np.float32)
        if not np.isfinite(x).all():
            raise MediaError(f"{name} is damaged: some of its samples are not numbers (NaN or infinity).")
        return x
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"audio data must be WAV bytes or a float32 array, not {type(data).__name__}")
    wav, rate = decode_wav(data, name)
    return resample(wav, rate)


def prepare_audio(data, name: str = "audio") -> list[PreparedAudio]:
    """WAV bytes, or a float mono 16 kHz array (what the browser decodes MP3, OGG and M4A to), as log-mel
    features for the audio tower: one PreparedAudio per CHUNK_SECONDS piece, in order. A last piece too
    short for one feature frame (160 samples or fewer, 10 ms) is dropped. Raises MediaError."""
    x = _as_16k(data, name)
    step = CHUNK_SECONDS * SAMPLE_RATE
    pieces = []
    for s0 in range(0, x.size, step):
        piece = x[s0:s0 + step]
        frames = audio_frames(piece.size)
        if frames == 0:
            continue
        pieces.append(PreparedAudio(features=log_mel(piece), n_soft=audio_soft_tokens(frames),
                                    seconds=piece.size / SAMPLE_RATE))
    if not pieces:
        raise MediaError(f"{name} is too short: {_duration(x.size / SAMPLE_RATE)} of audio is less than one "
                         f"10 ms frame.")
    return pieces


# ----------------------------------------------------------------------------------------------------------
# Voice-clone target

VOICE_RATE = 24000  # Kokoro speaks at 24 kHz: the target is compared with its output at that rate
VOICE_MIN_SECONDS = 3.0  # of voice after trimming: fewer frames make a mean spectrum that wanders with the words
VOICE_KEEP_SECONDS = 60.0  # a mean over frames gains little past a minute; a longer clip keeps its first minute
VOICE_MAX_INPUT_SECONDS = MAX_AUDIO_SECONDS  # longer input is refused before any work
VOICE_MIN_RATE = 8000  # telephone audio; below it too little of a voice's spectrum is left to match
VOICE_SILENT_DB = -50.0  # loudest sound (dBFS, 10 ms RMS) below this: a muted or unplugged microphone
VOICE_MAX_CLIPPED = 0.01  # fraction of the kept samples cut off at the peaks above which the clip is refused
VOICE_LEVEL_DB = -20.0  # the voice frames' RMS the target is scaled to (peaks kept at or below 0.99)
_VOICE_FRAME_SECONDS = 0.01  # frame of the level analysis
_VOICE_MARGIN_SECONDS = 0.15  # kept around the first and last voice frames: soft onsets and decays
_VOICE_RANGE_DB = 40.0  # frames this far below the loudest are silence whatever the noise floor
_VOICE_NOISE_DB = 6.0  # frames within this of the noise floor are noise, not voice...
_VOICE_NOISE_CAP_DB = 20.0  # ...unless that would call frames this close to the loudest noise
_VOICE_LOUDEST_FRAMES = 10  # the loudest reference is the 10th loudest frame (100 ms): one click cannot set it


class VoiceTargetError(MediaError):
    """A recording cannot be used as a voice-clone target (silent, too short, clipped, too long, ...); the
    message is one plain sentence naming the problem and what to do."""


@dataclass(frozen=True)
class VoiceTarget:
    """A recording prepared as the target of voice cloning.

    pcm: float32 [n] mono at VOICE_RATE (24 kHz): the input from just before its first voice frame to just
        after its last (a VOICE_KEEP_SECONDS cut at most), resampled, scaled by `gain`.
    seconds: n / VOICE_RATE.
    voice_seconds: how much of pcm is voice (10 ms frames above the silence threshold).
    trimmed: (start, end) in seconds of the input: the part of it that pcm holds.
    input_seconds, input_rate: the input's length and sample rate.
    truncated: the voice ran past VOICE_KEEP_SECONDS and only its first VOICE_KEEP_SECONDS are kept.
    peak: the largest |sample| of the kept part of the input (mono, before scaling); 1.0 is full scale.
    rms_db: the RMS level of the kept voice frames of the input in dBFS (before scaling).
    gain: the factor pcm was scaled by: to VOICE_LEVEL_DB, less where the peaks would pass 0.99.
    clipped: the fraction of the kept input samples that are clipped (in runs at the input's largest or smallest
        value).
    bandwidth_hz: half the lower of the input's rate and VOICE_RATE; pcm holds nothing above it.
    """

    pcm: np.ndarray
    seconds: float
    voice_seconds: float
    trimmed: tuple[float, float]
    input_seconds: float
    input_rate: int
    truncated: bool
    peak: float
    rms_db: float
    gain: float
    clipped: float
    bandwidth_hz: float


def _voice_rate(rate, name: str) -> int:
    """The sample rate as an int (a browser's AudioBuffer gives 44100.0), or VoiceTargetError."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise TypeError(f"the sample rate must be a number, not {type(rate).__name__}") from None
    if not (math.isfinite(r) and r > 0 and r == int(r)):
        raise VoiceTargetError(f"{name} has a sample rate of {rate!r} Hz, which is not a usable rate: it must be a "
                               f"positive whole number of samples per second.")
    r = int(r)
    if r < VOICE_MIN_RATE:
        raise VoiceTargetError(f"{name} has a sample rate of {r} Hz, too low to hold a voice's timbre: record at "
                               f"{VOICE_MIN_RATE} Hz or more (24 kHz or more is best).")
    if r > MAX_SOURCE_RATE:
        raise VoiceTargetError(f"{name} has a sample rate of {r} Hz; rates from {VOICE_MIN_RATE} Hz to "
                               f"{MAX_SOURCE_RATE} Hz are supported.")
    return r


def _channels(samples, name: str) -> np.ndarray:
    """float [channels, n] from a 1-D array or a 2-D one with at most 8 channels on either axis (soundfile gives
    [n, channels], a stack of the browser's per-channel arrays [channels, n])."""
    x = np.asarray(samples)
    if x.dtype.kind != "f":
        raise TypeError(f"audio samples must be a float array (full scale 1.0), not {x.dtype}")
    if x.size == 0:
        raise VoiceTargetError(f"{name} has no audio: it holds no samples. Record at least 3 s of voice.")
    if x.ndim == 1:
        return x[None]
    if x.ndim == 2 and x.shape[1] <= 8:
        return x.T
    if x.ndim == 2 and x.shape[0] <= 8:
        return x
    raise VoiceTargetError(f"{name} has samples of shape {x.shape}: give a 1-D mono array, or a 2-D one with at "
                           f"most 8 channels on one axis.")


def _clipped(x: np.ndarray) -> np.ndarray:
    """bool [n]: the samples of `x` in runs of 2 or more at its largest or its smallest value (to 1e-6 of the
    peak). A clipped recording is flat there wherever the voice went past the clip level. A clean one reaches
    its extremes once or a few times, and in runs almost never: two samples equal to 1e-6 at a sine's crest must
    straddle it to within 1e-6 / (2 pi f / rate) of a sample, a steady tone whose period is a whole number of
    samples included (its crest sample repeats every period, but alone)."""
    n = x.size
    mark = np.zeros(n, bool)
    if n < 2:
        return mark
    hi, lo = float(x.max()), float(x.min())
    tol = 1e-6 * max(abs(hi), abs(lo))
    extreme = np.zeros(n, bool)
    if hi > 0:
        extreme |= x >= hi - tol
    if lo < 0:
        extreme |= x <= lo + tol
    i = np.flatnonzero(extreme[1:] & extreme[:-1])  # samples i and i + 1 both at an extreme...
    i = i[np.abs(x[i + 1] - x[i]) <= tol]  # ...the same one
    mark[i] = True
    mark[i + 1] = True
    return mark


def _frame_db(x: np.ndarray, frame: int) -> np.ndarray:
    """float64 [ceil(n / frame)]: the RMS level in dBFS of consecutive frames (the last one zero-padded)."""
    whole = x.size // frame
    body = x[: whole * frame].reshape(whole, frame)
    power = np.einsum("ij,ij->i", body, body, dtype=np.float64) / frame
    if x.size > whole * frame:
        tail = x[whole * frame:].astype(np.float64)
        power = np.append(power, np.dot(tail, tail) / frame)
    return 10.0 * np.log10(power + 1e-12)


def prepare_voice_target(samples: np.ndarray, rate, name: str = "recording") -> VoiceTarget:
    """A recording (float samples at `rate` Hz: [n] mono, or [n, channels] / [channels, n] averaged to mono)
    prepared as a voice-clone target, or VoiceTargetError with one sentence for the user.

    1. Refused: no samples, NaN or infinity, a rate that is not a whole number from VOICE_MIN_RATE to
       MAX_SOURCE_RATE, more than VOICE_MAX_INPUT_SECONDS.
    2. The level of 10 ms frames, at the input's rate. Refused as silent when the 10th loudest frame (so that a
       click does not count) is below VOICE_SILENT_DB. Voice frames are those above the higher of 40 dB below
       that loudest level and 6 dB above the noise floor (the 10th percentile frame), the latter capped at 20 dB
       below the loudest so that a clip with no pauses keeps its quieter syllables.
    3. Trimmed from 0.15 s before the first voice frame to 0.15 s after the last; a span longer than
       VOICE_KEEP_SECONDS keeps its first VOICE_KEEP_SECONDS (`truncated`). Refused with under VOICE_MIN_SECONDS
       of voice frames in it, or more than VOICE_MAX_CLIPPED of its samples clipped (in runs at the channel's largest
       or smallest value, found per channel before averaging).
    4. Resampled to 24 kHz (`resample`, scipy's resample_poly; in Pyodide `await load_resampler()` first,
       unless the input is at 24 kHz) and scaled so the voice frames' RMS is VOICE_LEVEL_DB, the peaks at most
       0.99: what is played next to Kokoro's voice, and clear of the log-mel floor when the input was quiet.
    """
    r = _voice_rate(rate, name)
    chans = _channels(samples, name)
    if not np.isfinite(chans).all():
        raise VoiceTargetError(f"{name} is damaged: some of its samples are not numbers (NaN or infinity).")
    n = chans.shape[1]
    if n / r > VOICE_MAX_INPUT_SECONDS:
        raise VoiceTargetError(str(_too_long(name, n / r)))
    clipped = np.zeros(n, bool)
    for c in chans:
        clipped |= _clipped(c)
    mono = (chans.mean(axis=0) if chans.shape[0] > 1 else chans[0]).astype(np.float32)

    frame = max(1, round(r * _VOICE_FRAME_SECONDS))
    db = _frame_db(mono, frame)
    ranked = np.sort(db)
    loudest = ranked[-min(_VOICE_LOUDEST_FRAMES, db.size)]
    if loudest < VOICE_SILENT_DB:
        raise VoiceTargetError(f"{name} is silent or nearly silent (its level stays below {VOICE_SILENT_DB:g} dBFS): "
                               f"check that the microphone is on and not muted, and record again closer to it.")
    floor = ranked[int(0.1 * (db.size - 1))]
    threshold = max(loudest - _VOICE_RANGE_DB, min(floor + _VOICE_NOISE_DB, loudest - _VOICE_NOISE_CAP_DB))
    voice = db > threshold
    first, last = np.flatnonzero(voice)[[0, -1]]  # the 10th loudest frame is above the threshold: never empty
    margin = round(r * _VOICE_MARGIN_SECONDS)
    s0 = max(0, int(first) * frame - margin)
    s1 = min(n, (int(last) + 1) * frame + margin)
    keep = round(r * VOICE_KEEP_SECONDS)
    truncated = s1 - s0 > keep
    if truncated:
        s1 = s0 + keep
    kept_voice = voice[s0 // frame: -(-s1 // frame)]
    voice_seconds = int(kept_voice.sum()) * frame / r
    if voice_seconds < VOICE_MIN_SECONDS:
        raise VoiceTargetError(f"{name} has only {_duration(voice_seconds)} of voice; record at least "
                               f"{VOICE_MIN_SECONDS:g} s (10-30 s is best).")
    clipped_fraction = float(clipped[s0:s1].mean())
    if clipped_fraction > VOICE_MAX_CLIPPED:
        raise VoiceTargetError(f"{name} is clipped: {100 * clipped_fraction:.1f}% of its samples are cut off flat at "
                               f"full scale, which distorts the voice; record again further from the microphone or "
                               f"with its input level lower.")

    part = mono[s0:s1]
    voice_power = np.power(10.0, db[s0 // frame: -(-s1 // frame)][kept_voice] / 10.0).mean()
    rms_db = float(10.0 * np.log10(voice_power))
    pcm = resample(part, r, VOICE_RATE)
    gain = 10.0 ** ((VOICE_LEVEL_DB - rms_db) / 20.0)
    pcm_peak = float(np.abs(pcm).max())
    if pcm_peak * gain > 0.99:
        gain = 0.99 / pcm_peak
    pcm = (pcm.astype(np.float64) * gain).astype(np.float32)
    return VoiceTarget(
        pcm=pcm,
        seconds=pcm.size / VOICE_RATE,
        voice_seconds=voice_seconds,
        trimmed=(s0 / r, s1 / r),
        input_seconds=n / r,
        input_rate=r,
        truncated=bool(truncated),
        peak=float(np.abs(part).max()),
        rms_db=rms_db,
        gain=float(gain),
        clipped=clipped_fraction,
        bandwidth_hz=min(r, VOICE_RATE) / 2.0,
    )


def prepare_voice_target_wav(data: bytes, name: str = "recording") -> VoiceTarget:
    """`prepare_voice_target` of a WAV file's samples (`decode_wav`: any channel count, averaged to mono).
    Raises MediaError (a WAV file we do not read) or VoiceTargetError."""
    samples, rate = decode_wav(data, name)
    return prepare_voice_target(samples, rate, name)
