"""rullama_py.media: decoding and Gemma 4 image preprocessing, against transformers' Gemma4ImageProcessorPil.

The goldens (tests/goldens/gemma4_images.npz, from tools/make_image_goldens.py) hold transformers' output for
the real photographs in tests/fixtures/images at two budgets; nothing here imports transformers or torch, so
every test is marked `pyodide` and runs again inside Pyodide with Pyodide's own Pillow (tests/test_in_pyodide.py).
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rullama_py.media import (
    MAX_IMAGE_PIXELS,
    SOFT_TOKEN_BUDGETS,
    MediaError,
    PreparedImage,
    decode_image,
    fit_to_budget,
    prepare_image,
)

pytestmark = pytest.mark.pyodide

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "fixtures" / "images"
GOLDENS = HERE / "goldens" / "gemma4_images.npz"
P = 16

# file -> (height, width) as decoded, upright
FILES = {
    "landscape.jpg": (320, 480),
    "portrait_exif.jpg": (480, 320),  # stored 480 wide x 320 high with EXIF Orientation 6
    "alpha.png": (120, 180),
    "one_pixel.png": (1, 1),
    "wide.jpg": (60, 1500),
    "tall.jpg": (1200, 12),
    "grey.png": (160, 240),
    "animated.gif": (133, 200),
    "photo.webp": (384, 384),
    "photo.bmp": (120, 160),
}
BUDGETS = (70, 280)

# Parity bounds, in 0..255 pixel units. With the goldens' Pillow (natively) the result is exact. Pyodide's
# Pillow 10.2 decodes JPEG with IJG libjpeg 9, which upsamples chroma differently from the libjpeg-turbo of
# native Pillow: a mean of about 0.5 level, single pixels up to about 30 levels at sharp colour edges.
# Lossless formats (and this WebP) decode identically everywhere.
MEAN_MAX = 1.0  # mean |ours - transformers| over the stored whole patches, and over all per-patch means
PIXEL_MAX = {"jpg": 48.0, "webp": 48.0}  # any single pixel of the stored whole patches; 1.0 for the others
PATCH_MEAN_MAX = {"jpg": 6.0, "webp": 6.0}  # any per-patch, per-channel mean; 1.0 for the others


def _read(name: str) -> bytes:
    return (IMAGES / name).read_bytes()


def _png(rgb: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(rgb).save(b, "PNG")
    return b.getvalue()


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _to_255(patches: np.ndarray) -> np.ndarray:
    return (patches.astype(np.float64) + 1.0) * 127.5


def _hf_order(patches: np.ndarray) -> np.ndarray:
    """(channel, row, col) columns -> transformers' (row, col, channel)."""
    n = patches.shape[0]
    return patches.reshape(n, 3, P, P).transpose(0, 2, 3, 1).reshape(n, P * P * 3)


def parity(name: str, budget: int) -> dict:
    """prepare_image against the golden of (name, budget): exact geometry, and pixel difference figures."""
    g = np.load(GOLDENS)
    key = f"{name}@{budget}"
    r = prepare_image(_read(name), budget=budget, name=name)
    assert isinstance(r, PreparedImage)
    assert r.original_size == FILES[name]
    assert r.size == tuple(int(x) for x in g[f"{key}/size"])
    assert r.n_soft == int(g[f"{key}/n_soft"])
    pos = g[f"{key}/positions"]
    assert r.positions.dtype == np.uint32 and r.positions.shape == pos.shape
    np.testing.assert_array_equal(r.positions, pos.astype(np.uint32))
    pw, ph = r.grid
    assert (pw * P, ph * P) == (r.size[1], r.size[0]) and pw * ph == r.patches.shape[0]
    assert r.n_soft == r.patches.shape[0] // 9
    assert r.patches.dtype == np.float32 and r.patches.shape[1] == 3 * P * P
    assert r.patches.min() >= -1.0 and r.patches.max() <= 1.0
    ours = _to_255(_hf_order(r.patches))
    # Every value is 2 v / 255 - 1 of an integer v (transformers resizes uint8 and rescales).
    assert np.abs(ours - np.round(ours)).max() < 2e-3
    idx = g[f"{key}/sample_idx"]
    d = np.abs(ours[idx] - g[f"{key}/sample"].astype(np.float64))
    n = ours.shape[0]
    means = ours.reshape(n, P * P, 3).mean(axis=1)
    dm = np.abs(means - g[f"{key}/patch_sum"].astype(np.float64) / (P * P))
    return {"mean": float(d.mean()), "max": float(d.max()), "patch_mean_mean": float(dm.mean()), "patch_mean_max": float(dm.max())}


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name", list(FILES))
def test_parity_with_transformers(name, budget):
    f = parity(name, budget)
    print(f"parity {name}@{budget}: {json.dumps(f)}")
    assert f["mean"] <= MEAN_MAX and f["patch_mean_mean"] <= MEAN_MAX, f
    ext = name.rsplit(".", 1)[1]
    assert f["max"] <= PIXEL_MAX.get(ext, 1.0) and f["patch_mean_max"] <= PATCH_MEAN_MAX.get(ext, 1.0), f


def test_fit_to_budget_matches_transformers_rule():
    fit = np.load(GOLDENS)["fit"]
    got = [fit_to_budget(int(h), int(w), budget=int(b)) for h, w, b, _, _ in fit]
    np.testing.assert_array_equal(np.array(got), fit[:, 3:])
    for h, w, b, th, tw in fit:
        assert th % 48 == 0 and tw % 48 == 0 and th * tw <= b * 9 * 256


def test_fit_to_budget_edge_cases():
    assert fit_to_budget(1, 1) == (768, 768)
    assert fit_to_budget(60, 1500) == (144, 3984)
    assert fit_to_budget(60, 1500, budget=70) == (48, 1968)
    # A side that rounds to 0 becomes one 48-pixel cell; the other is floor(long / short) cells, at most budget.
    assert fit_to_budget(10, 10000) == (48, 280 * 48)
    assert fit_to_budget(1200, 12, budget=70) == (70 * 48, 48)
    assert fit_to_budget(12, 1200, budget=70) == (48, 70 * 48)
    assert fit_to_budget(1, 3000, budget=1120) == (48, 1120 * 48)
    for b in SOFT_TOKEN_BUDGETS:
        th, tw = fit_to_budget(3000, 4000, budget=b)
        assert th * tw <= b * 9 * 256 and abs(tw / th - 4 / 3) < 0.1


@pytest.mark.parametrize("budget", [0, 100, 279, 2240, "280", None])
def test_unknown_budget(budget):
    with pytest.raises(MediaError, match="budget"):
        prepare_image(_read("landscape.jpg"), budget=budget)
    with pytest.raises(MediaError, match="70, 140, 280, 560, 1120"):
        fit_to_budget(100, 100, budget=budget)


def test_patch_layout_channel_row_col():
    """A 384 x 384 image is already the budget-70 size (no resize): every patch column can be checked."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)
    r = prepare_image(_png(rgb), budget=70)
    assert r.size == (384, 384) and r.grid == (24, 24) and r.n_soft == 64
    expect = rgb.astype(np.float64) * (2 / 255) - 1
    for k in (0, 1, 23, 24, 300, 575):
        px, py = (int(v) for v in r.positions[k])
        assert k == py * 24 + px
        block = expect[py * P:(py + 1) * P, px * P:(px + 1) * P, :]  # [row, col, channel]
        np.testing.assert_allclose(r.patches[k], block.transpose(2, 0, 1).reshape(-1), atol=1e-6)
    assert r.patches[5, 0 * 256 + 2 * 16 + 7] == np.float32(expect[2, 5 * 16 + 7, 0])
    assert r.patches[5, 2 * 256 + 15 * 16 + 0] == np.float32(expect[15, 5 * 16, 2])
    np.testing.assert_array_equal(r.positions[:3], [[0, 0], [1, 0], [2, 0]])
    np.testing.assert_array_equal(r.positions[24], [0, 1])


def test_decode_is_upright_and_rgb():
    for name, hw in FILES.items():
        a = decode_image(_read(name), name)
        assert a.dtype == np.uint8 and a.shape == (*hw, 3) and a.flags.c_contiguous, name
    # EXIF Orientation 6: the stored pixels turned clockwise.
    stored = np.asarray(Image.open(io.BytesIO(_read("portrait_exif.jpg"))).convert("RGB"))
    np.testing.assert_array_equal(decode_image(_read("portrait_exif.jpg")), np.rot90(stored, k=-1))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation(orientation):
    rng = np.random.default_rng(orientation)
    upright = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    # What a camera stores for each orientation: the inverse of the transform that shows it upright.
    store = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
             5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, 1),
             7: lambda a: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda a: np.rot90(a, -1)}
    stored = np.ascontiguousarray(store[orientation](upright))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(stored), "PNG", exif=exif.tobytes())
    np.testing.assert_array_equal(decode_image(data), upright)


def test_alpha_composited_on_white():
    a = decode_image(_read("alpha.png"))
    src = np.asarray(Image.open(io.BytesIO(_read("alpha.png"))).convert("RGBA")).astype(np.float64)
    alpha = src[..., 3:] / 255
    expect = src[..., :3] * alpha + 255 * (1 - alpha)
    assert np.abs(a - expect).max() <= 1.0
    assert (a[:30, :40] == 255).all()  # the fully transparent corner, whatever colours lie under it
    # Palette PNG with a transparent index (tRNS), LA, and a transparent GIF index.
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    out = decode_image(_encode(pal, "PNG", transparency=1))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 255, 255], [255, 0, 0], [255, 255, 255]])
    out = decode_image(_encode(pal, "GIF", transparency=1))
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 255, 255], [255, 0, 0], [255, 255, 255]])
    la = Image.merge("LA", [Image.fromarray(np.array([[100, 100, 100]], np.uint8)),
                            Image.fromarray(np.array([[0, 255, 128]], np.uint8))])
    np.testing.assert_array_equal(decode_image(_encode(la, "PNG"))[0, :, 0], [255, 100, 177])  # 100 a + 255 (1 - a)


def test_colour_modes_to_rgb():
    grey = decode_image(_read("grey.png"))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    np.testing.assert_array_equal(grey[..., 0], np.asarray(Image.open(io.BytesIO(_read("grey.png")))))
    # 16-bit greyscale: the high byte (not clipped to white).
    g16 = (np.arange(64 * 4, dtype=np.uint32).reshape(4, 64) * 256 + 17).astype(np.uint16)
    out = decode_image(_encode(Image.fromarray(g16), "PNG"))
    np.testing.assert_array_equal(out[..., 1], (g16 >> 8).astype(np.uint8))
    # CMYK JPEG, bilevel PNG, palette BMP.
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # red
    out = decode_image(_encode(cmyk, "JPEG", quality=95))
    assert out.shape == (8, 16, 3) and out[..., 0].min() > 230 and out[..., 1:].max() < 25
    bw = Image.fromarray(np.array([[0, 255, 0]], np.uint8)).convert("1")
    np.testing.assert_array_equal(decode_image(_encode(bw, "PNG"))[0, :, 0], [0, 255, 0])
    p = Image.fromarray(np.array([[[1, 2, 3], [200, 100, 50]]], np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    np.testing.assert_array_equal(decode_image(_encode(p, "BMP"))[0], [[1, 2, 3], [200, 100, 50]])


def test_gif_first_frame_only():
    frames = Image.open(io.BytesIO(_read("animated.gif")))
    first = np.asarray(frames.convert("RGB"))
    frames.seek(1)
    second = np.asarray(frames.convert("RGB"))
    assert np.abs(first.astype(int) - second).mean() > 10
    np.testing.assert_array_equal(decode_image(_read("animated.gif")), first)


# --- bad input ------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(w: int, h: int) -> bytes:
    """A PNG that claims w x h RGB pixels and holds 100 bytes of them."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 100)) + _chunk(b"IEND", b""))


def bmp_header(w: int, h: int) -> bytes:
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)


def _sentence(e: MediaError, name: str) -> str:
    msg = str(e)
    assert name in msg and msg.endswith(".") and "\n" not in msg, msg
    for word in ("PIL", "Pillow", "Traceback", "Error", "errno", "cannot identify"):
        assert word not in msg, msg
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__), "a Pillow exception is chained"
    return msg


def _refuse(data: bytes, name: str, *words: str) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fn in (lambda: decode_image(data, name), lambda: prepare_image(data, name=name)):
            with pytest.raises(MediaError) as info:
                fn()
            msg = _sentence(info.value, name)
            for w in words:
                assert w in msg.lower(), msg
    assert not [w for w in caught if "PIL" in str(w.filename) or "ecompression" in str(w.message)], caught
    return msg


def test_empty_file():
    _refuse(b"", "photo.jpg", "empty")


@pytest.mark.parametrize("name", ["landscape.jpg", "alpha.png", "photo.webp", "photo.bmp", "grey.png"])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.97])
def test_truncated(name, keep):
    data = _read(name)
    _refuse(data[: int(len(data) * keep)], name, "damaged or incomplete")


def test_truncated_gif():
    data = _encode(Image.open(io.BytesIO(_read("animated.gif"))), "GIF")  # the first frame alone
    _refuse(data[: len(data) // 2], "cat.gif", "damaged or incomplete")


def test_corrupt():
    png = bytearray(_read("alpha.png"))
    png[2000:2100] = bytes(range(100))
    _refuse(bytes(png), "alpha.png", "damaged")
    jpg = bytearray(_read("landscape.jpg"))
    jpg[5000:5200] = b"\xff" * 200
    _refuse(bytes(jpg), "landscape.jpg", "damaged")


@pytest.mark.parametrize("svg", [
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="5" height="5"/></svg>',
    b'\xef\xbb\xbf<?xml version="1.0" encoding="UTF-8"?>\n<!-- drawn by hand -->\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "x">\n<svg></svg>',
])
def test_svg(svg):
    msg = _refuse(svg, "logo.svg", "svg", "not supported", "png")
    assert "convert it to png" in msg.lower()
    _refuse(svg, "logo.png", "svg")  # whatever the name says


def test_svg_by_name_when_the_content_is_not_recognisable():
    svg = b"<?xml version='1.0'?>\n<!-- " + b"x" * 2000 + b" -->\n<svg></svg>"  # <svg past the first KiB
    _refuse(svg, "drawing.svg", "svg", "convert it to png")
    _refuse(b"\x1f\x8b\x08\x00" + bytes(64), "drawing.svgz", "svg")


def test_text_renamed_png():
    _refuse(b"Shopping list:\n- milk\n- eggs\n", "photo.png", "not an image", "text")
    _refuse("Grüße\r\n".encode() * 20, "photo.png", "text")
    _refuse(b"x" * 1023 + "é".encode() * 10, "photo.png", "text")  # a character across the 1 KiB we look at


def test_other_files():
    _refuse(bytes(range(256)) * 8, "blob.png", "png, jpeg, webp, bmp or gif")
    _refuse(b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 64, "IMG_0001.HEIC", "heic")
    _refuse(b"II*\x00" + b"\0" * 64, "scan.tif", "tiff")
    _refuse(b"%PDF-1.7\n" + bytes(range(256)), "doc.pdf", "pdf")
    _refuse(png_header(0, 10), "zero.png")


@pytest.mark.parametrize("make, w, h", [
    (png_header, 50000, 50000),   # above Pillow's own error limit (2 x 89.5 MP)
    (png_header, 12000, 9000),    # 108 MP: between Pillow's warning limit and ours
    (png_header, 100001, 1000),
    (bmp_header, 50000, 50000),
    (bmp_header, 11000, 10000),
])
def test_decompression_bomb_refused_from_header(make, w, h):
    assert w * h > MAX_IMAGE_PIXELS
    data = make(w, h)
    tracemalloc = pytest.importorskip("tracemalloc")
    tracemalloc.start()
    try:
        msg = _refuse(data, "bomb.png", "too large", "megapixels")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated for a refused image"


def test_pixel_cap_allows_camera_photos():
    assert MAX_IMAGE_PIXELS >= 8192 * 6144  # a 50 MP camera
    assert MAX_IMAGE_PIXELS <= 200_000_000


def test_corrupt_exif_is_ignored_quietly():
    """A broken EXIF block (Pillow warns "Corrupt EXIF data") leaves the image as stored, with no warning."""
    stored = np.random.default_rng(3).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(stored), "PNG", exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\xff\xff" + b"\x12\x01" * 20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_array_equal(decode_image(data), stored)
    assert not caught, [str(w.message) for w in caught]


def test_bytes_like_inputs():
    data = _read("photo.bmp")
    ref = decode_image(data)
    np.testing.assert_array_equal(decode_image(bytearray(data)), ref)
    np.testing.assert_array_equal(decode_image(memoryview(data)), ref)
    with pytest.raises(TypeError):
        decode_image("photo.bmp")
