"""Build the image fixtures (tests/fixtures/images/) and their Gemma 4 preprocessing goldens
(tests/goldens/gemma4_images.npz) from transformers' own Gemma 4 image processor.

The oracle is `Gemma4ImageProcessorPil`, transformers' PIL backend (the one AutoImageProcessor picks when
torchvision is not installed; with torchvision it picks `Gemma4ImageProcessor`, which resizes with torch
instead of Pillow). Each image is opened the way transformers' `load_image` opens it, `PIL.Image.open` then
`ImageOps.exif_transpose`, and handed to the processor as a PIL image, so that the processor's own
`convert_to_rgb` composites transparency onto white. (`load_image` itself ends with `.convert("RGB")`, which
drops alpha without compositing: a path or URL given to the processor loses transparency differently from a
PIL image given to it. rullama_py.media follows convert_to_rgb, the compositing path.)

Needs transformers, torch and Pillow (and scikit-image for `images`), which the project does not depend on;
run it from a scratch venv outside the repo:

    python -m venv /work/scratch/hf-venv
    /work/scratch/hf-venv/bin/pip install torch==2.13.0 transformers==5.23.0 pillow scikit-image
    /work/scratch/hf-venv/bin/python tools/make_image_goldens.py images    # (re)write the fixture images
    /work/scratch/hf-venv/bin/python tools/make_image_goldens.py           # write the goldens

The goldens store, for each image and each budget in BUDGETS (see tests/fixtures/README.md):
  <file>@<budget>/size        int32 [2]  (height, width) after resizing
  <file>@<budget>/n_soft      int32      num_soft_tokens_per_image
  <file>@<budget>/positions   int16 [n, 2]  image_position_ids without the padding rows
  <file>@<budget>/patch_sum   uint16 [n, 3]  the sum of v over every patch per channel (exact)
  <file>@<budget>/sample_idx  int32 [k]  which patches are stored whole: the four corners and random ones
  <file>@<budget>/sample      uint8 [k, p*p*3]  those patches, transformers' (row, col, channel) order, as v
                              with pixel_values = v / 255 (exact: the processor resizes uint8 and rescales)
  fit                         int32 [N, 5]  (height, width, budget, resized height, resized width) from
                              transformers' get_aspect_ratio_preserving_size, for random and extreme sizes
  info                        str  JSON: versions, processor, command
Storing every pixel would take 20 MB; the per-patch sums cover the whole image (orientation, compositing,
the resize's geometry) and the whole patches cover the pixel layout and the filter's edges.
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = os.path.join(ROOT, "tests", "fixtures", "images")
GOLDENS = os.path.join(ROOT, "tests", "goldens", "gemma4_images.npz")
BUDGETS = (70, 280)
SAMPLES = 28  # random whole patches per case, besides the four corners
PATCH = 16


def make_images() -> None:
    """The fixture images, from scikit-image's bundled sample photographs (public domain / CC0)."""
    from PIL import Image, ImageDraw, ImageFilter
    from skimage import data

    os.makedirs(IMAGES, exist_ok=True)
    coffee = Image.fromarray(data.coffee())  # 600 x 400, CC0 (Rachel Michetti)
    astronaut = Image.fromarray(data.astronaut())  # 512 x 512, public domain (NASA)
    chelsea = Image.fromarray(data.chelsea())  # 451 x 300, CC0 (Stefan van der Walt)
    rocket = Image.fromarray(data.rocket())  # 640 x 427, public domain (SpaceX)

    def save(im, name, **kw):
        path = os.path.join(IMAGES, name)
        im.save(path, **kw)
        print(f"{name}: {im.size[0]} x {im.size[1]} {im.mode}, {os.path.getsize(path)} bytes")

    bicubic = Image.Resampling.BICUBIC
    # Landscape JPEG.
    save(coffee.resize((480, 320), bicubic), "landscape.jpg", quality=85)
    # Portrait JPEG whose pixels are stored sideways, with EXIF Orientation 6 (rotate 90 degrees clockwise to
    # show): what a phone held upright writes.
    upright = astronaut.crop((96, 16, 416, 496))  # 320 x 480
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 480 x 320, turned counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    save(stored, "portrait_exif.jpg", quality=85, exif=exif.tobytes())
    # PNG with alpha: a real photo with a soft-edged elliptical alpha drawn on it and a fully transparent corner
    # (where the photo's own colours must not show: transparency is composited onto white).
    small = chelsea.resize((180, 120), bicubic)
    alpha = Image.new("L", small.size, 0)
    ImageDraw.Draw(alpha).ellipse((12, 6, 168, 114), fill=255)
    alpha = alpha.filter(ImageFilter.GaussianBlur(10))
    ImageDraw.Draw(alpha).rectangle((0, 0, 40, 30), fill=0)
    ImageDraw.Draw(alpha).rectangle((140, 90, 179, 119), fill=128)
    rgba = small.copy()
    rgba.putalpha(alpha)
    save(rgba, "alpha.png", optimize=True)
    # 1 x 1 pixel, the colour of one pixel of a photo.
    save(coffee.crop((300, 200, 301, 201)), "one_pixel.png")
    # Very wide (1500 x 60) and very tall (12 x 1200) strips of a photo; the tall one takes transformers' branch
    # for a side that rounds to zero at budget 70.
    big = rocket.resize((1500, 1001), bicubic)
    save(big.crop((0, 470, 1500, 530)), "wide.jpg", quality=85)
    tall = rocket.resize((1798, 1200), bicubic)
    save(tall.crop((893, 0, 905, 1200)), "tall.jpg", quality=85)
    # Greyscale PNG (mode L).
    save(rocket.resize((240, 160), bicubic).convert("L"), "grey.png", optimize=True)
    # GIF with two frames: only the first is used.
    g1 = chelsea.resize((200, 133), bicubic).quantize(256)
    g2 = chelsea.resize((200, 133), bicubic).transpose(Image.Transpose.FLIP_LEFT_RIGHT).quantize(256)
    save(g1, "animated.gif", save_all=True, append_images=[g2], duration=200, loop=0)
    # Lossy WebP.
    save(astronaut.resize((384, 384), bicubic), "photo.webp", quality=80)
    # 24-bit BMP.
    save(coffee.crop((200, 100, 360, 220)), "photo.bmp")


def make_goldens() -> None:
    sys.modules["torchvision"] = None  # the PIL backend is the oracle; keep transformers off torchvision
    import PIL
    import torch
    import transformers
    from PIL import Image, ImageOps
    from transformers import Gemma4ImageProcessorPil

    names = sorted(n for n in os.listdir(IMAGES) if not n.startswith("."))
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)
    for budget in BUDGETS:
        proc = Gemma4ImageProcessorPil(max_soft_tokens=budget)
        for name in names:
            with open(os.path.join(IMAGES, name), "rb") as f:
                raw = f.read()
            im = ImageOps.exif_transpose(Image.open(io.BytesIO(raw)))  # load_image without its .convert("RGB")
            r = proc(images=[im], return_tensors="np")
            n_soft = int(r["num_soft_tokens_per_image"][0])
            pos = np.asarray(r["image_position_ids"][0])
            n = int((pos[:, 0] >= 0).sum())
            pos = pos[:n]
            pv = np.asarray(r["pixel_values"][0][:n], dtype=np.float64)  # [n, p*p*3], (row, col, channel)
            v = np.round(pv * 255.0)
            assert np.abs(v / 255.0 - pv).max() < 1e-6, "pixel_values are not v / 255"
            pw, ph = int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1
            assert pw * ph == n
            size = (ph * PATCH, pw * PATCH)
            corners = [0, pw - 1, (ph - 1) * pw, n - 1]
            rest = np.setdiff1d(np.arange(n), corners)
            pick = rng.choice(rest, size=min(SAMPLES, rest.size), replace=False)
            idx = np.unique(np.concatenate([corners, pick])).astype(np.int32)
            key = f"{name}@{budget}"
            out[f"{key}/size"] = np.array(size, np.int32)
            out[f"{key}/n_soft"] = np.array(n_soft, np.int32)
            out[f"{key}/positions"] = pos.astype(np.int16)
            out[f"{key}/patch_sum"] = v.reshape(n, PATCH * PATCH, 3).sum(axis=1).astype(np.uint16)
            out[f"{key}/sample_idx"] = idx
            out[f"{key}/sample"] = v[idx].astype(np.uint8)
            print(f"{key}: {im.size[0]}x{im.size[1]} {im.mode} -> {size[1]}x{size[0]}, {n} patches, {n_soft} soft tokens")
    from transformers.models.gemma4.image_processing_pil_gemma4 import get_aspect_ratio_preserving_size

    sizes = [(1, 1), (1, 2), (2, 1), (48, 48), (3000, 4000), (4000, 3000), (60, 1500), (1500, 60), (12, 1200),
             (1200, 12), (1, 10000), (10000, 1), (7, 5000), (5000, 7), (768, 768), (769, 768), (8192, 6144)]
    sizes += [tuple(int(x) for x in rng.integers(1, 5000, 2)) for _ in range(120)]
    sizes += [(int(h), int(h * a)) for h, a in zip(rng.integers(1, 200, 60), rng.uniform(20, 400, 60))]
    fit = []
    for budget in (70, 140, 280, 560, 1120):
        for h, w in sizes:
            th, tw = get_aspect_ratio_preserving_size(h, w, patch_size=PATCH, max_patches=budget * 9, pooling_kernel_size=3)
            fit.append((h, w, budget, th, tw))
    out["fit"] = np.array(fit, np.int32)
    out["info"] = np.array(json.dumps({
        "oracle": "transformers.Gemma4ImageProcessorPil(max_soft_tokens=budget), images opened with PIL.Image.open"
                  " + ImageOps.exif_transpose and passed as PIL images",
        "transformers": transformers.__version__, "torch": torch.__version__, "pillow": PIL.__version__,
        "numpy": np.__version__, "budgets": list(BUDGETS), "patch_size": PATCH,
        "command": "python tools/make_image_goldens.py",
    }))
    os.makedirs(os.path.dirname(GOLDENS), exist_ok=True)
    np.savez_compressed(GOLDENS, **out)
    print(f"{GOLDENS}: {os.path.getsize(GOLDENS)} bytes")


if __name__ == "__main__":
    if sys.argv[1:] == ["images"]:
        make_images()
    elif not sys.argv[1:]:
        make_goldens()
    else:
        sys.exit("usage: make_image_goldens.py [images]")
