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
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np

SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)

# Larger than any camera photo (a 50 MP sensor makes 8192 x 6144), far smaller than a decompression bomb.
MAX_IMAGE_PIXELS = 100_000_000

# Pillow format ids we open; nothing else is even tried (JPEG covers MPO, the multi-picture JPEG of cameras).
_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
_SUPPORTED = "PNG, JPEG, WebP, BMP or GIF"


class MediaError(ValueError):
    """An image could not be used; the message is a plain sentence naming the problem, fit to show a user."""


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
