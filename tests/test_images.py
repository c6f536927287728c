from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from resnet_cli.errors import ImageError, NoInputsError
from resnet_cli.images import ResizeMode, collect_inputs, load_image

# ----- finding inputs ---------------------------------------------------------------------


def test_folder_inputs_chosen_by_extension_case_insensitive(tmp_path: Path) -> None:
    make_image(tmp_path / "b.JPG")
    make_image(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    make_image(tmp_path / ".hidden.jpg")
    sub = tmp_path / "sub"
    sub.mkdir()
    make_image(sub / "c.jpeg")
    assert collect_inputs([str(tmp_path)]) == [str(tmp_path / "a.png"), str(tmp_path / "b.JPG")]
    assert collect_inputs([str(tmp_path)], recursive=True) == [
        str(tmp_path / "a.png"), str(tmp_path / "b.JPG"), str(sub / "c.jpeg")]


def test_glob_patterns_are_expanded_by_the_tool(tmp_path: Path) -> None:
    for name in ("x1.jpg", "x2.jpg", "deep/x3.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        make_image(tmp_path / name)
    assert collect_inputs([str(tmp_path / "x*.jpg")]) == [
        str(tmp_path / "x1.jpg"), str(tmp_path / "x2.jpg")]
    assert len(collect_inputs([str(tmp_path / "**" / "*.jpg")])) == 3


def test_stdin_dash_and_missing_files_kept_in_place(tmp_path: Path) -> None:
    real = make_image(tmp_path / "real.jpg")
    stdin = io.StringIO(f"{real}\n\n  {tmp_path / 'gone.jpg'}  \n")
    empty: list[str] = []
    paths = collect_inputs(["-", str(tmp_path / "nomatch*.png")], stdin=stdin,
                           on_empty=empty.append)
    assert paths == [str(real), str(tmp_path / "gone.jpg")]
    assert empty == [str(tmp_path / "nomatch*.png")]  # a pattern matching nothing


def test_named_inputs_that_hold_no_image_are_reported(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no image here")
    photo = make_image(tmp_path / "photo.jpg")
    empty: list[str] = []
    args = [str(tmp_path / "empty"), str(photo), str(tmp_path / "texts"),
            str(tmp_path / "*.gif")]
    assert collect_inputs(args, on_empty=empty.append) == [str(photo)]
    assert empty == [args[0], args[2], args[3]]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_at_once_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)  # a plain open() would block here until a writer appears
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(str(fifo), size=32)
    # Found in a folder, it is listed (to be reported), not silently skipped.
    make_image(tmp_path / "b.png")
    assert collect_inputs([str(tmp_path)]) == [str(tmp_path / "b.png"), str(fifo)]


def test_a_character_device_is_not_a_regular_file() -> None:
    with pytest.raises(ImageError, match="not a regular file"):
        load_image("/dev/null", size=32)


def test_no_inputs_at_all(tmp_path: Path) -> None:
    with pytest.raises(NoInputsError, match="No images found"):
        collect_inputs([str(tmp_path)])  # an empty folder


# ----- decoding ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png"), ("WEBP", ".webp"),
                                        ("BMP", ".bmp"), ("TIFF", ".tif"), ("GIF", ".gif")])
def test_every_common_format_decodes(tmp_path: Path, fmt: str, suffix: str) -> None:
    path = make_image(tmp_path / f"img{suffix}", (70, 50), fmt=fmt)
    arr = load_image(str(path), size=32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert arr.std() > 5  # real content, not a blank


def test_content_decides_not_extension(tmp_path: Path) -> None:
    png_named_jpg = make_image(tmp_path / "really_png.jpg", fmt="PNG")
    assert load_image(str(png_named_jpg), size=32).shape == (32, 32, 3)


def test_gif_first_frame_and_tiff_first_page(tmp_path: Path) -> None:
    red = Image.new("RGB", (40, 40), (255, 0, 0))
    blue = Image.new("RGB", (40, 40), (0, 0, 255))
    red.save(tmp_path / "anim.gif", save_all=True, append_images=[blue], duration=100)
    red.save(tmp_path / "pages.tif", save_all=True, append_images=[blue])
    for name in ("anim.gif", "pages.tif"):
        arr = load_image(str(tmp_path / name), size=32).astype(int)
        assert arr[..., 0].mean() > 200 and arr[..., 2].mean() < 50, name


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 30), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 30, 30))  # white on the left half
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    arr = load_image(str(tmp_path / "rotated.jpg"), size=32, resize=ResizeMode.squash)
    # After the 90-degree clockwise turn the white half is on top.
    assert arr[:12].mean() > 200 and arr[-12:].mean() < 60


def test_modes_convert_to_rgb_correctly(tmp_path: Path) -> None:
    Image.new("L", (40, 40), 128).save(tmp_path / "l.png")
    Image.new("LA", (40, 40), (0, 0)).save(tmp_path / "la.png")  # fully transparent black
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(tmp_path / "rgba.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")  # red
    p = Image.new("P", (40, 40), 0)
    p.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    p.paste(1, (0, 0, 40, 20))
    p.save(tmp_path / "p.png", transparency=0)  # bottom half transparent
    assert np.all(load_image(str(tmp_path / "l.png"), size=32) == 128)
    assert np.all(load_image(str(tmp_path / "la.png"), size=32) == 255)  # composited on white
    assert np.all(load_image(str(tmp_path / "rgba.png"), size=32) == 255)
    cmyk = load_image(str(tmp_path / "cmyk.jpg"), size=32).astype(int)
    assert cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60
    pal = load_image(str(tmp_path / "p.png"), size=32, resize=ResizeMode.squash).astype(int)
    assert abs(pal[2, 16, 1] - 200) < 5 and np.all(pal[-2] == 255)


def test_sixteen_bit_is_scaled_not_clipped_white(tmp_path: Path) -> None:
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    arr = load_image(str(tmp_path / "deep.png"), size=32, resize=ResizeMode.squash)
    assert arr.min() < 20 and arr.max() > 235
    assert 100 < arr.mean() < 155  # a plain convert("L") would be almost all 255


def test_squash_matches_keras_load_img_exactly(tmp_path: Path) -> None:
    import keras

    path = make_image(tmp_path / "photo.png", (123, 77), seed=5)
    ours = load_image(str(path), size=48, resize=ResizeMode.squash)
    theirs = keras.utils.img_to_array(
        keras.utils.load_img(path, target_size=(48, 48), interpolation="bilinear"))
    np.testing.assert_array_equal(ours, theirs.astype(np.uint8))


def test_crop_is_the_centre_of_the_resized_image(tmp_path: Path) -> None:
    img = Image.new("RGB", (200, 100), (0, 0, 255))
    img.paste((255, 0, 0), (50, 0, 150, 100))  # red centre square, blue sides
    img.save(tmp_path / "wide.png")
    arr = load_image(str(tmp_path / "wide.png"), size=64).astype(int)
    # Centre crop keeps 87.5% of the shorter side: all of it inside the red square.
    assert arr[..., 0].min() > 240 and arr[..., 2].max() < 15
    squash = load_image(str(tmp_path / "wide.png"), size=64, resize=ResizeMode.squash)
    assert squash[:, :8, 2].mean() > 240  # squash keeps the blue sides


def test_reference_crop_protocol(sample_photos: list[Path]) -> None:
    """Same pixels (up to resampling) as: shorter side to size/0.875, then centre crop."""
    path = sample_photos[0]
    size = 96
    ours = load_image(str(path), size=size).astype(float)
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = (size / 0.875) / min(img.size)
        resized = img.resize((round(img.width * scale), round(img.height * scale)),
                             Image.Resampling.BILINEAR)
        left, top = (resized.width - size) // 2, (resized.height - size) // 2
        ref = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=float)
    assert np.abs(ours - ref).mean() < 6


def test_large_jpeg_decodes_at_reduced_scale_at_224(sample_photos: list[Path],
                                                    tmp_path: Path) -> None:
    """The full-size path (224 px, crop) on a photo big enough for JPEG draft decoding at
    1/2 scale or less: the same picture as a full decode, up to resampling."""
    big = tmp_path / "big.jpg"
    with Image.open(sample_photos[0]) as img:
        img.convert("RGB").resize((img.width * 3, img.height * 3)).save(big, quality=95)
    ours = load_image(str(big), size=224).astype(float)
    with Image.open(big) as img:
        full = img.convert("RGB")
        side = min(full.size) * 0.875
        left, top = (full.width - side) / 2, (full.height - side) / 2
        ref = np.asarray(full.resize((224, 224), Image.Resampling.BILINEAR,
                                     box=(left, top, left + side, top + side)), dtype=float)
        with Image.open(big) as drafted:
            drafted.draft("RGB", (257, 257))
            assert drafted.size[0] < full.size[0]  # the reduced-scale decode really happens
    assert ours.shape == (224, 224, 3) and np.abs(ours - ref).mean() < 4


def test_thin_and_tiny_images_stay_small(tmp_path: Path) -> None:
    Image.new("RGB", (20000, 1), (10, 20, 30)).save(tmp_path / "strip.png")
    Image.new("RGB", (1, 1), (200, 100, 50)).save(tmp_path / "dot.png")
    for name in ("strip.png", "dot.png"):
        for mode in ResizeMode:
            assert load_image(str(tmp_path / name), size=64, resize=mode).shape == (64, 64, 3)


@pytest.mark.parametrize("content,reason", [
    (b"", "not an image"),
    (b"hello, I am a text file", "not an image"),
])
def test_non_images_fail_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        load_image(str(path), size=32)
    assert info.value.path == str(path)


def test_truncated_jpeg_fails_cleanly(tmp_path: Path) -> None:
    path = make_image(tmp_path / "whole.jpg", (300, 200))
    data = path.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(str(cut), size=32)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file"):
        load_image(str(tmp_path / "absent.jpg"), size=32)
    with pytest.raises(ImageError, match="is a directory"):
        load_image(str(tmp_path), size=32)


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image(tmp_path / "big.png", (400, 300))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="too many pixels"):
        load_image(str(path), size=32)


def test_bytes_in_memory_decode_like_the_file(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.jpg", size=(90, 60))
    from resnet_cli.images import decode_image

    for mode in ResizeMode:
        want = load_image(str(path), size=32, resize=mode)
        got = decode_image(path.read_bytes(), name="upload.jpg", size=32, resize=mode)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ImageError, match=r"upload\.bin: empty file"):
        decode_image(b"", name="upload.bin", size=32)
    with pytest.raises(ImageError, match=r"upload\.txt: not an image"):
        decode_image(b"hello", name="upload.txt", size=32)
