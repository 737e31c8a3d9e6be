"""resizer.py: loading every mode and failure mode, crops, resizing, degradations, atomic writes."""

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import png_header_only
from PIL import Image, ImageOps

import resizer
from resizer import ImageLoadError, load_image

SAMPLES = Path(__import__("skimage.data").data.data_dir)


def gradient_rgb(width=48, height=32):
    """A small RGB image whose every pixel differs, so flips and rotations are detectable."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], 2).astype(np.uint8)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


# --------------------------------------------------------------------------- modes


def test_rgb_png_round_trips_exactly(tmp_path):
    img = gradient_rgb()
    resizer.save_image(tmp_path / "a.png", img)
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_grey_and_bilevel_become_three_equal_channels(tmp_path, mode):
    grey = (np.arange(16 * 16).reshape(16, 16) % 256).astype(np.uint8)
    im = Image.fromarray(grey).convert(mode)
    im.save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    expected = np.asarray(im.convert("L"))
    assert out.shape == (16, 16, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], expected)
    if mode == "1":
        assert set(np.unique(out)) <= {0, 255}


def test_la_gives_grey_rgb_and_separate_alpha(tmp_path):
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0], la[..., 1] = 100, np.arange(8)[None, :] * 30
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    rgb, alpha = load_image(tmp_path / "la.png", with_alpha=True)
    assert (rgb == 100).all() and rgb.shape == (8, 8, 3)
    np.testing.assert_array_equal(alpha, la[..., 1])


def test_palette_without_transparency_has_no_alpha(tmp_path):
    img = gradient_rgb(16, 16)
    pal = Image.fromarray(img).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    rgb, alpha = load_image(tmp_path / "p.png", with_alpha=True)
    assert alpha is None
    np.testing.assert_array_equal(rgb, np.asarray(pal.convert("RGB")))


def test_palette_with_transparency_returns_its_alpha(tmp_path):
    pal = Image.new("P", (4, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 1, 0, 0])
    pal.save(tmp_path / "t.png", transparency=1)  # index 1 (blue) is transparent
    rgb, alpha = load_image(tmp_path / "t.png", with_alpha=True)
    assert rgb.shape == (2, 4, 3)
    np.testing.assert_array_equal(alpha, [[255, 0, 255, 0], [0, 0, 255, 255]])
    np.testing.assert_array_equal(rgb[0, 0], [255, 0, 0])


def test_rgba_alpha_separate_and_dropped_by_default(tmp_path):
    rgba = np.dstack([gradient_rgb(8, 8), np.full((8, 8), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    rgb, alpha = load_image(tmp_path / "a.png", with_alpha=True)
    np.testing.assert_array_equal(rgb, rgba[..., :3])
    assert (alpha == 7).all()
    assert load_image(tmp_path / "a.png").shape == (8, 8, 3)
    assert load_image(tmp_path / "a.png", with_alpha=True)[1] is not None
    resizer.save_image(tmp_path / "plain.png", rgba[..., :3])
    assert load_image(tmp_path / "plain.png", with_alpha=True)[1] is None


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_is_converted_to_rgb(tmp_path, fmt):
    path = tmp_path / f"c.{fmt.lower()}"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(path, format=fmt)  # pure cyan
    out = load_image(path)
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[8, 8], [0, 255, 255], atol=3)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 257 * 100, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")
    assert Image.open(tmp_path / "16.png").mode.startswith("I;16")
    out = load_image(tmp_path / "16.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 100, 255])


def test_32bit_int_and_float_modes(tmp_path):
    ints = np.array([[0, 257 * 50, 65535]], np.int32)
    Image.fromarray(ints).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(load_image(tmp_path / "i.tif")[0, :, 1], [0, 50, 255])

    floats = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif")[0, :, 2], [0, 128, 255])

    wide = np.array([[-10.0, 0.0, 1000.0]], np.float32)  # an HDR-ish range is stretched, not clipped
    Image.fromarray(wide).save(tmp_path / "w.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "w.tif")[0, :, 0], [0, 3, 255])


def test_animated_gif_gives_first_frame():
    out = load_image(SAMPLES / "no_time_for_that_tiny.gif")
    with Image.open(SAMPLES / "no_time_for_that_tiny.gif") as im:
        expected = np.asarray(im.convert("RGB"))
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


# --------------------------------------------------------------------------- EXIF


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillows_exif_transpose(tmp_path, orientation):
    img = gradient_rgb(12, 8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(img).save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    out = load_image(tmp_path / "o.png")
    np.testing.assert_array_equal(out, expected)
    assert out.shape[:2] == ((8, 12) if orientation <= 4 else (12, 8))


def test_exif_rotate_90_jpeg_puts_top_row_on_the_right(tmp_path):
    img = np.zeros((64, 96, 3), np.uint8)
    img[:16] = 255  # white band on top of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    Image.fromarray(img).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg")
    assert out.shape == (96, 64, 3)
    assert out[:, -8:].mean() > 240 and out[:, :40].mean() < 15


# --------------------------------------------------------------------------- failures


def _jpeg_bytes(img, **kw):
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="JPEG", **kw)
    return buffer.getvalue()


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_raises_naming_the_file(tmp_path, suffix):
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    whole = tmp_path / f"whole{suffix}"
    resizer.save_image(whole, noise)
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageLoadError, match="truncated") as info:
        load_image(broken)
    assert str(info.value).startswith(str(broken))


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.jpg: empty file"):
        load_image(tmp_path / "empty.jpg")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("these are not pixels\n" * 20)
    with pytest.raises(ImageLoadError, match=r"notes\.png: not an image"):
        load_image(tmp_path / "notes.png")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_corrupt_jpeg_body(tmp_path):
    data = bytearray(_jpeg_bytes(gradient_rgb(64, 64)))
    data[200:260] = b"\xff" * 60  # garbage markers in the entropy-coded data
    (tmp_path / "c.jpg").write_bytes(bytes(data[:400]))
    with pytest.raises(ImageLoadError, match=r"c\.jpg"):
        load_image(tmp_path / "c.jpg")



def test_decompression_bomb_is_refused_with_a_clear_message(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(12_000, 12_000))  # 144 MP: above our limit, below Pillow's hard one
    with pytest.raises(ImageLoadError, match=r"bomb\.png: refused as a possible decompression bomb: 12000x12000"):
        load_image(bomb)
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(40_000, 40_000))  # 1.6 GP: Pillow itself refuses to open it
    with pytest.raises(ImageLoadError, match=r"huge\.png: refused as a possible decompression bomb"):
        load_image(huge)


def test_max_pixels_is_configurable(tmp_path):
    resizer.save_image(tmp_path / "a.png", gradient_rgb(20, 20))
    with pytest.raises(ImageLoadError, match="limit of 100"):
        load_image(tmp_path / "a.png", max_pixels=100)
    assert load_image(tmp_path / "a.png", max_pixels=None).shape == (20, 20, 3)


def test_broken_exif_does_not_reject_the_pixels(tmp_path):
    data = bytearray(_jpeg_bytes(gradient_rgb(32, 32)))
    app1 = b"\xff\xe1" + struct.pack(">H", 16) + b"Exif\0\0MM\0*\xff\xff\xff\xff"  # offset far past the end
    (tmp_path / "e.jpg").write_bytes(bytes(data[:2]) + app1 + bytes(data[2:]))
    assert load_image(tmp_path / "e.jpg").shape == (32, 32, 3)


# --------------------------------------------------------------------------- draft decoding


def test_draft_decodes_jpeg_smaller_but_close_to_a_full_decode(tmp_path):
    photo = load_image(SAMPLES / "astronaut.png")
    big = resizer.resize(photo, (2048, 2048))
    (tmp_path / "big.jpg").write_bytes(_jpeg_bytes(big, quality=92))
    full = load_image(tmp_path / "big.jpg")
    drafted = load_image(tmp_path / "big.jpg", draft_size=256)
    assert full.shape == (2048, 2048, 3)
    assert 256 <= drafted.shape[0] < 1024  # 1/4 or 1/8 scale, never below the requested side
    a = resizer.resize(full, (128, 128))
    b = resizer.resize(drafted, (128, 128))
    assert psnr(a, b) > 38


def test_draft_size_is_in_displayed_orientation_and_ignored_for_png(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "r.jpg").write_bytes(_jpeg_bytes(np.zeros((400, 1600, 3), np.uint8), exif=exif))
    out = load_image(tmp_path / "r.jpg", draft_size=(100, 400))  # displayed 400 wide, 1600 tall
    assert out.shape[1] >= 100 and out.shape[0] >= 400 and out.shape[0] < 1600
    resizer.save_image(tmp_path / "p.png", np.zeros((400, 400, 3), np.uint8))
    assert load_image(tmp_path / "p.png", draft_size=50).shape == (400, 400, 3)


# --------------------------------------------------------------------------- conversions, crops, resizing


def test_float_uint8_conversions():
    img = np.array([0, 1, 127, 128, 254, 255], np.uint8)
    x = resizer.to_float(img)
    assert x.dtype == np.float32 and x.max() == 1.0
    np.testing.assert_array_equal(resizer.to_uint8(x), img)
    np.testing.assert_array_equal(resizer.to_uint8(np.array([-0.5, 0.5 / 255, 0.6 / 255, 1.7, np.nan])),
                                  [0, 0, 1, 255, 0])
    assert resizer.to_uint8(img) is img
    with pytest.raises(TypeError):
        resizer.to_float(np.zeros(3, np.int64))


def test_resize_filters_and_errors():
    img = gradient_rgb(40, 20)
    for name in resizer.FILTERS:
        assert resizer.resize(img, (10, 5), name).shape == (5, 10, 3)
    with pytest.raises(ValueError, match="unknown filter"):
        resizer.resize(img, (10, 5), "cubic-ish")
    grey = resizer.resize(img[..., 0], (20, 10))
    assert grey.shape == (10, 20) and grey.dtype == np.uint8
    as_float = resizer.resize(resizer.to_float(img), (20, 10))
    assert as_float.dtype == np.float32 and as_float.shape == (10, 20, 3)
    assert np.abs(resizer.to_uint8(as_float).astype(int) - resizer.resize(img, (20, 10))).max() <= 1


def test_lr_from_hr_is_pillows_antialiased_bicubic():
    hr = load_image(SAMPLES / "astronaut.png")[:128, :128]
    lr = resizer.lr_from_hr(hr, 4)
    assert lr.shape == (32, 32, 3)
    np.testing.assert_array_equal(lr, np.asarray(Image.fromarray(hr).resize((32, 32), Image.BICUBIC)))
    with pytest.raises(ValueError, match="mod_crop"):
        resizer.lr_from_hr(hr[:126], 4)


def test_mod_crop_and_squares():
    img = gradient_rgb(50, 31)
    assert resizer.mod_crop(img, 4).shape == (28, 48, 3)
    assert resizer.mod_crop(img, 1).shape == img.shape
    square = resizer.center_square(img)
    np.testing.assert_array_equal(square, img[:, 9:40])
    a = resizer.random_square(img, 16, np.random.default_rng(3))
    b = resizer.random_square(img, 16, 3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="cannot crop 32x32"):
        resizer.random_square(img, 32, 0)


def test_degrade_is_seeded_and_each_step_acts():
    img = load_image(SAMPLES / "chelsea.png")[:96, :96]
    np.testing.assert_array_equal(resizer.degrade(img), img)
    a = resizer.degrade(img, noise_sigma=10, seed=1)
    np.testing.assert_array_equal(a, resizer.degrade(img, noise_sigma=10, seed=1))
    assert not np.array_equal(a, resizer.degrade(img, noise_sigma=10, seed=2))
    assert 25 < psnr(a, img) < 31  # sigma 10 noise is ~28 dB
    blurred = resizer.degrade(img, blur_sigma=2)
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < 0.6 * np.abs(np.diff(img.astype(int), axis=1)).mean()
    jpeg = resizer.degrade(img, jpeg_quality=10)
    assert jpeg.shape == img.shape and 22 < psnr(jpeg, img) < 40
    with pytest.raises(ValueError):
        resizer.degrade(img, jpeg_quality=0)


def colour_count(img):
    return len(np.unique(img.reshape(-1, img.shape[-1]) if img.ndim == 3 else img.ravel(), axis=0))


@pytest.mark.parametrize("colors", [2, 16, 256])
def test_palette_degradation_keeps_at_most_n_colours_and_dithering_changes_it(colors):
    img = load_image(SAMPLES / "astronaut.png")[100:196, 150:246]
    assert colour_count(img) > 256
    plain = resizer.degrade(img, palette_colors=colors)
    dithered = resizer.degrade(img, palette_colors=colors, palette_dither="floyd")
    for out in (plain, dithered):
        assert out.shape == img.shape and out.dtype == np.uint8
        assert 2 <= colour_count(out) <= colors
    assert not np.array_equal(plain, dithered)
    # the dithered image has the same palette, spread by error diffusion: its local means track the original
    blur = lambda x: x.astype(float).reshape(24, 4, 24, 4, 3).mean(axis=(1, 3))  # noqa: E731
    if colors == 2:
        assert np.abs(blur(dithered) - blur(img)).mean() < np.abs(blur(plain) - blur(img)).mean()
    if colors == 256:
        assert psnr(plain, img) > 30  # 256 colours is a mild degradation
    grey = resizer.degrade(img[..., 1], palette_colors=4)
    assert grey.shape == img.shape[:2] and colour_count(grey) <= 4
    np.testing.assert_array_equal(plain, resizer.degrade(img, palette_colors=colors))  # deterministic
    with pytest.raises(ValueError, match="2..256"):
        resizer.degrade(img, palette_colors=1)
    with pytest.raises(ValueError, match="unknown palette dither"):
        resizer.degrade(img, palette_colors=8, palette_dither="ordered")


# --------------------------------------------------------------------------- atomic writes


def test_atomic_output_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "sub" / "model.keras"
    with resizer.atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".keras" and resizer.is_temp_output(tmp)
        tmp.write_text("complete")
    assert target.read_text() == "complete"

    with pytest.raises(RuntimeError), resizer.atomic_output(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "complete"
    assert [p.name for p in target.parent.iterdir()] == ["model.keras"]


def test_dead_temp_outputs_are_a_gone_process_leftovers_for_that_output_only(tmp_path):
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)  # a process that has ended
    target = tmp_path / "clip.mp4"
    dead = tmp_path / f".clip.mp4.tmp-{dead_pid}-0a1b2c3d.mp4"
    live = tmp_path / f".clip.mp4.tmp-{os.getpid()}-0a1b2c3d.mp4"  # a run still writing (this one)
    other = tmp_path / f".other.mp4.tmp-{dead_pid}-0a1b2c3d.mp4"  # another output's
    for path in (dead, live, other):
        path.write_bytes(b"half")
    assert resizer.dead_temp_outputs(target) == [dead]
    assert resizer.dead_temp_outputs(tmp_path / "missing" / "x.png") == []


def test_save_image_alpha_formats_and_interrupted_write(tmp_path, monkeypatch):
    img = gradient_rgb(16, 16)
    alpha = np.full((16, 16), 9, np.uint8)
    resizer.save_image(tmp_path / "a.png", img, alpha=alpha)
    rgb, back = load_image(tmp_path / "a.png", with_alpha=True)
    np.testing.assert_array_equal(rgb, img)
    np.testing.assert_array_equal(back, alpha)
    resizer.save_image(tmp_path / "a.jpg", img)
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    with pytest.raises(ValueError, match="alpha"):
        resizer.save_image(tmp_path / "b.jpg", img, alpha=alpha)
    with pytest.raises(ValueError, match="extension"):
        resizer.save_image(tmp_path / "a.xyz", img)

    def save_then_die(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        resizer.save_image(tmp_path / "c.png", img)
    assert not (tmp_path / "c.png").exists()
    assert not [p for p in tmp_path.iterdir() if resizer.is_temp_output(p)]


def test_image_size_reads_the_header_in_displayed_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 8
    (tmp_path / "r.jpg").write_bytes(_jpeg_bytes(np.zeros((30, 50, 3), np.uint8), exif=exif))
    assert resizer.image_size(tmp_path / "r.jpg") == (30, 50)
    (tmp_path / "bomb.png").write_bytes(png_header_only(12_000, 12_000))
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        resizer.image_size(tmp_path / "bomb.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        resizer.image_size(tmp_path / "empty.png")


@pytest.mark.parametrize("kind", ["rgb", "grey", "rgba", "rotated"])
def test_load_square_equals_the_slow_path(tmp_path, kind):
    img = load_image(SAMPLES / "coffee.png")[:301, :451]  # odd margins: (451 - 301) // 2 = 75
    path = tmp_path / "x.png"
    if kind == "grey":
        Image.fromarray(img[..., 1]).save(path)
    elif kind == "rgba":
        Image.fromarray(np.dstack([img, np.full(img.shape[:2], 200, np.uint8)])).save(path)
    elif kind == "rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(img).save(path, exif=exif)
    else:
        Image.fromarray(img).save(path)
    fast = resizer.load_square(path, 64)
    slow = resizer.resize(resizer.center_square(load_image(path)), (64, 64))
    assert fast.shape == (64, 64, 3) and fast.dtype == np.uint8
    np.testing.assert_array_equal(fast, slow)


def test_load_square_drafts_big_jpegs_closely(tmp_path):
    big = resizer.resize(load_image(SAMPLES / "astronaut.png"), (2400, 1600))
    (tmp_path / "big.jpg").write_bytes(_jpeg_bytes(big, quality=92))
    exact = resizer.resize(resizer.center_square(load_image(tmp_path / "big.jpg")), (128, 128))
    np.testing.assert_array_equal(resizer.load_square(tmp_path / "big.jpg", 128, draft=False), exact)
    assert psnr(resizer.load_square(tmp_path / "big.jpg", 128), exact) > 40
    with pytest.raises(ImageLoadError, match="empty"):
        (tmp_path / "e.jpg").write_bytes(b"")
        resizer.load_square(tmp_path / "e.jpg", 8)
