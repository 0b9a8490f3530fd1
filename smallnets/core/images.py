"""Decoding untrusted image bytes into RGB pictures: the one place that knows about formats and their traps."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Refuse decompression bombs ourselves (a clear error) instead of relying on PIL's warning/exception mix.
DEFAULT_MAX_PIXELS = 50_000_000
# Rows per strip when shrinking a decoded picture (a 7071-wide RGBA strip of 256 rows: 7 MB).
SHRINK_STRIP_ROWS = 256
EXIF_ORIENTATION = 0x0112  # the tag ImageOps.exif_transpose acts on
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why, for a 4xx answer or a CLI error."""


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """Read only the header of one image and check its declared size; no pixel is decoded yet.

    With ``min_side``, a JPEG is set to decode straight at a reduced DCT scale (1/2, 1/4 or 1/8) that keeps its
    shorter side >= ``min_side``: ``image.size`` then tells how many pixels ``finish_decode`` will produce.
    """
    if not data:
        raise ImageDecodeError("empty image: the upload has no bytes")
    with _decode_errors():
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(f"image too large: {width}x{height} pixels exceeds the limit of {max_pixels} pixels")
        image.seek(0)
        if min_side is not None and image.format == "JPEG" and min(width, height) > 2 * min_side:
            scale = min(width, height) / min_side
            image.draft(None, (max(1, int(width / scale)), max(1, int(height / scale))))
    return image


def finish_decode(image: Image.Image, min_side: int | None = None) -> Image.Image:
    """Decode an ``open_image`` result to RGB, shrunk by a whole factor (box filter) to keep the shorter side
    >= ``min_side`` before any colour conversion, so conversions touch the small picture only.
    """
    with _decode_errors():
        image.load()
    if min_side is not None:
        image = shrink(image, min_side)
    return to_rgb(image)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None) -> Image.Image:
    """Decode one image to RGB: first frame of animations, EXIF orientation applied, bombs rejected early.

    The pixel count is checked from the header, before any pixel is decoded. ``min_side`` (the preprocessing's
    needs) lets a large upload be decoded and kept small: its peak memory is one decoded frame at most.
    """
    return finish_decode(open_image(data, max_pixels, min_side), min_side)


def shrink(image: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce by the largest whole factor that keeps the shorter side >= ``min_side`` (no-op if none).

    Done strip by strip, so the only full-size picture in memory is the decoded one: Pillow's own reduce of an
    RGBA picture first makes a premultiplied full-size copy, and palette or 16-bit pictures need a conversion
    before they can be averaged; here those copies are one strip each.
    """
    factor = min(image.size) // min_side
    if factor < 2:
        return image
    width, height = image.size
    rows = factor * max(1, SHRINK_STRIP_ROWS // factor)
    reduced: Image.Image | None = None
    for top in range(0, height, rows):
        strip = _reducible(image.crop((0, top, width, min(height, top + rows)))).reduce(factor)
        if reduced is None:
            reduced = Image.new(strip.mode, (-(-width // factor), -(-height // factor)))
        reduced.paste(strip, (0, top // factor))
    assert reduced is not None
    return reduced.convert("I;16") if image.mode.startswith("I;16") else reduced


def _reducible(image: Image.Image) -> Image.Image:
    """``image`` in a mode ``Image.reduce`` can average (palette indices and 1-bit pixels cannot be)."""
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I;16"):  # reduce() has no 16-bit kernel
        return image.convert("I")
    return image


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """PIL's many failure types -> one ``ImageDecodeError`` that says what is wrong with the bytes."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as error:
        # PIL's own message only names the BytesIO object; say what the bytes should have been instead.
        raise ImageDecodeError(
            "not a decodable image: unrecognised format (expected JPEG, PNG, WebP, GIF, BMP or TIFF bytes)"
        ) from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"not a decodable image: {error}") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(f"corrupt or truncated image: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """Normalize any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F) to 8-bit RGB, honouring EXIF orientation.

    An upright RGB picture is returned as it is: each needless full-size copy costs its page faults (2.6 ms for a
    1000x872 photo here, more than the rest of the conversion).
    """
    image = upright(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says; the same object when it says nothing (Pillow would copy)."""
    if image.getexif().get(EXIF_ORIENTATION, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read and decode an image file; the error names the file."""
    path = Path(path)
    try:
        return decode_image(path.read_bytes(), max_pixels)
    except ImageDecodeError as error:
        raise ImageDecodeError(f"{path}: {error}") from error


def iter_image_files(folder: str | Path) -> Iterator[Path]:
    """Image files below ``folder`` (recursive), in a stable order."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            yield path


SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")


def sample_photos(names: tuple[str, ...] = SAMPLE_PHOTOS) -> dict[str, Image.Image]:
    """Real photos bundled with scikit-image (the ``demo`` extra), by name, as RGB pictures."""
    try:
        from skimage import data as skimage_data
    except ImportError as error:
        raise RuntimeError(
            "sample photos need scikit-image: install the demo extra (pip install 'smallnets[demo]')"
        ) from error
    photos = {}
    for name in names:
        array = getattr(skimage_data, name)()
        photos[name] = to_rgb(Image.fromarray(array))
    return photos
