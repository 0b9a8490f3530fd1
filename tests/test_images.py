"""The untrusted-bytes decoder: unusual valid images decode to the right RGB picture, bad bytes fail clearly."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smallnets.core.images import ImageDecodeError, decode_image, open_image, shrink, to_rgb
from smallnets.core.metadata import Preprocessing
from smallnets.core.preprocess import preprocess

SIZE = (96, 64)  # small and not square, so a wrong rotation changes the shape
PREPROCESSING = Preprocessing(resize=36, crop=32, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture(scope="module")
def picture(photos: dict[str, Image.Image]) -> Image.Image:
    return photos["chelsea"].resize(SIZE)


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width`` x ``height`` RGB pixels but carries almost no data (a bomb shape)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_plain_rgb_round_trip(picture: Image.Image) -> None:
    decoded = decode_image(encode(picture, "PNG"))
    assert decoded.mode == "RGB" and decoded.size == SIZE
    assert mean_abs_diff(decoded, picture) == 0.0


def test_grayscale_becomes_three_equal_channels(picture: Image.Image) -> None:
    decoded = decode_image(encode(picture.convert("L"), "PNG"))
    array = np.asarray(decoded)
    assert decoded.mode == "RGB" and decoded.size == SIZE
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])
    assert mean_abs_diff(decoded.convert("L"), picture.convert("L")) < 1.0


def test_rgba_is_composited_on_white(picture: Image.Image) -> None:
    rgba = picture.convert("RGBA")
    opaque = decode_image(encode(rgba, "PNG"))
    assert mean_abs_diff(opaque, picture) == 0.0
    rgba.putalpha(0)
    transparent = decode_image(encode(rgba, "PNG"))
    assert np.asarray(transparent).min() == 255  # fully transparent -> the white background, not black


def test_palette_image(picture: Image.Image) -> None:
    decoded = decode_image(encode(picture.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"))
    assert decoded.mode == "RGB" and decoded.size == SIZE
    assert mean_abs_diff(decoded, picture) < 8.0


def test_cmyk_jpeg(picture: Image.Image) -> None:
    decoded = decode_image(encode(picture.convert("CMYK"), "JPEG", quality=95))
    assert decoded.mode == "RGB" and decoded.size == SIZE
    assert mean_abs_diff(decoded, picture) < 8.0


def test_sixteen_bit_png_is_scaled_not_clipped(picture: Image.Image) -> None:
    gray = np.asarray(picture.convert("L"), dtype=np.uint16)
    deep = Image.fromarray(gray * 257)  # 0..255 -> 0..65535
    data = encode(deep, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data)
    assert decoded.mode == "RGB"
    assert mean_abs_diff(decoded.convert("L"), picture.convert("L")) < 1.0


@pytest.mark.parametrize(("orientation", "stored"), [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_orientation_is_applied(picture: Image.Image, orientation: int, stored: Image.Transpose) -> None:
    """A camera stores the sensor pixels rotated and an EXIF tag saying how to turn them upright."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(picture.transpose(stored), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data)
    assert decoded.size == SIZE
    assert mean_abs_diff(decoded, picture) < 6.0


def test_an_upright_rgb_picture_is_not_copied(picture: Image.Image) -> None:
    """Each full-size copy is page faults on the request path; an upright RGB picture needs none. Orientation 1
    ("upright", what most cameras write) counts as no turn."""
    assert to_rgb(picture) is picture
    exif = Image.Exif()
    exif[0x0112] = 1
    tagged = Image.open(io.BytesIO(encode(picture, "JPEG", quality=95, exif=exif.tobytes())))
    tagged.load()
    assert to_rgb(tagged) is tagged and preprocess([picture], PREPROCESSING).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(picture: Image.Image, fmt: str) -> None:
    other, third = Image.new("RGB", SIZE, (0, 0, 255)), Image.new("RGB", SIZE, (255, 0, 0))
    data = encode(picture, fmt, save_all=True, append_images=[other, third], duration=100, loop=0)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    decoded = decode_image(data)
    assert decoded.mode == "RGB" and decoded.size == SIZE
    assert mean_abs_diff(decoded, picture) < 20.0 < mean_abs_diff(decoded, other)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_rejected(picture: Image.Image, fmt: str) -> None:
    data = encode(picture, fmt)
    with pytest.raises(ImageDecodeError, match=r"truncated|corrupt|decodable"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "unrecognised format"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image"),
    ],
)
def test_non_images_are_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_bomb_is_rejected_from_the_header() -> None:
    """30000x30000 declared, ~100 bytes sent: decoding would first allocate 2.7 GB."""
    data = png_header_only(30000, 30000)
    assert len(data) < 200
    with pytest.raises(ImageDecodeError, match=r"30000x30000|900000000"):
        decode_image(data)


def test_pixel_limit_applies_before_decoding(picture: Image.Image) -> None:
    """Our own limit (below PIL's bomb threshold) names the size; a header-only file proves nothing is decoded."""
    with pytest.raises(ImageDecodeError, match="9000x8000 pixels exceeds"):
        decode_image(png_header_only(9000, 8000))
    width, height = SIZE
    with pytest.raises(ImageDecodeError, match=f"{width}x{height} pixels exceeds"):
        decode_image(encode(picture, "PNG"), max_pixels=width * height - 1)
    assert decode_image(encode(picture, "PNG"), max_pixels=width * height).size == SIZE


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "CMYK"])
def test_shrink_by_strips_equals_one_box_reduce(photos: dict[str, Image.Image], mode: str) -> None:
    big = photos["chelsea"].resize((1501, 1203)).convert(mode)
    shrunk = shrink(big, 200)
    assert shrunk.mode == mode and shrunk.size == (251, 201)  # factor 1203 // 200 = 6, partial last blocks kept
    assert np.array_equal(np.asarray(shrunk), np.asarray(big.reduce(6)))


@pytest.mark.parametrize("kind", ["palette_transparent", "sixteen_bit", "one_bit"])
def test_shrink_handles_modes_reduce_cannot_average(photos: dict[str, Image.Image], kind: str) -> None:
    """Decoded with ``min_side`` (shrunk while decoding) vs decoded whole: the same picture at the smaller size."""
    big = photos["coffee"].resize((1600, 1200))
    if kind == "palette_transparent":
        source = big.convert("P", palette=Image.Palette.ADAPTIVE)
        source.info["transparency"] = 0
    elif kind == "sixteen_bit":
        source = Image.fromarray(np.asarray(big.convert("L"), dtype=np.uint16) * 257)
    else:
        source = big.convert("1")
    data = encode(source, "PNG")
    whole = decode_image(data)
    small = decode_image(data, min_side=300)
    assert small.mode == "RGB" and small.size == (400, 300)
    assert mean_abs_diff(small, whole.resize(small.size, Image.Resampling.BOX)) < (40.0 if kind == "one_bit" else 2.0)


def test_jpeg_decodes_at_a_reduced_scale_that_keeps_min_side(photos: dict[str, Image.Image]) -> None:
    data = encode(photos["chelsea"].resize((4000, 3000)), "JPEG", quality=90)
    assert open_image(data, min_side=700).size == (1000, 750)  # 1/4 scale: 3000 // 700 = 4
    assert open_image(data, min_side=768).size == (2000, 1500)  # 1/4 would give 750 < 768: 1/2
    assert open_image(data).size == (4000, 3000)
    assert min(decode_image(data, min_side=768).size) >= 768


def test_peak_memory_of_a_large_decode_is_about_one_picture(tmp_path: Path) -> None:
    """A 4000x4000 RGBA PNG (64 MB decoded) shrunk while decoding: the process grows by about that, not by the
    premultiplied and converted full-size copies a plain reduce/convert would add (measured in a fresh process)."""
    path = tmp_path / "big.png"
    Image.new("RGBA", (4000, 4000), (10, 200, 30, 100)).save(path)
    script = (
        "import resource, sys; from smallnets.core.images import decode_image; data = open(sys.argv[1], 'rb').read();"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; decode_image(data, min_side=224);"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)"
    )
    grown_mb = float(
        subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True).stdout
    )
    assert grown_mb < 1.4 * 64, grown_mb
