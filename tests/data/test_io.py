import io

import numpy as np
import pytest
import torch
from PIL import Image

from augment.data.io import (
    ImageReadError,
    atomic_write_bytes,
    decode_image,
    encode_png,
    read_image,
    to_batch,
    validate_batch,
    write_png,
)


def _png(arr, mode):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_8bit_round_trip(tmp_path):
    arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    write_png(tmp_path / "a.png", arr)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == np.float32 and back.shape == (64, 64)
    assert np.abs(back - arr).max() <= 0.5 / 255 + 1e-6


def test_16bit_read_keeps_precision():
    raw = (np.arange(32 * 32, dtype=np.uint16) * 60).reshape(32, 32)
    out = decode_image(_png(raw, "I;16"))
    assert out.max() == pytest.approx(raw.max() / 65535, rel=1e-6)
    assert len(np.unique(out)) == raw.size  # no 8-bit quantisation


def test_16bit_write_round_trip():
    arr = np.random.default_rng(0).uniform(size=(16, 16)).astype(np.float32)
    back = decode_image(encode_png(arr, bits=16))
    assert np.abs(back - arr).max() < 1e-4


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_radiograph_turned_to_gray(mode):
    g = np.full((16, 16), 100, np.uint8)
    chans = [g, g, g] + ([np.full_like(g, 255)] if mode == "RGBA" else [])
    out = decode_image(_png(np.stack(chans, -1), mode))
    assert out.shape == (16, 16)
    assert np.allclose(out, 100 / 255, atol=1 / 255)


def test_resize_on_read():
    arr = np.zeros((64, 64), np.uint8)
    arr[:, 32:] = 255
    out = decode_image(_png(arr, "L"), size=16)
    assert out.shape == (16, 16)
    assert out[:, :7].max() < 0.05 and out[:, 9:].min() > 0.95


@pytest.mark.parametrize(
    "data, match",
    [(b"", "empty"), (b"not an image at all", "not a readable image"), (None, "not a readable image")],
)
def test_bad_bytes(data, match):
    if data is None:  # a truncated PNG
        data = _png(np.zeros((64, 64), np.uint8) + 7, "L")[:60]
    with pytest.raises(ImageReadError, match=match):
        decode_image(data, name="x.png")


def test_missing_file_named(tmp_path):
    with pytest.raises(ImageReadError, match="nope.png: file not found"):
        read_image(tmp_path / "nope.png")


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_fsyncs_file_before_rename_and_folder_after(tmp_path, monkeypatch):
    import os
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync-{kind}")
        real_fsync(fd)

    def replace(src, dst):
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = atomic_write_bytes(tmp_path / "sub" / "out.bin", b"data")
    assert out.read_bytes() == b"data"
    assert events == ["fsync-file", "rename", "fsync-dir"]
    assert [p.name for p in out.parent.iterdir()] == ["out.bin"]


def test_batch_convention():
    assert to_batch(np.zeros((8, 8))).shape == (1, 1, 8, 8)
    assert to_batch(torch.zeros(3, 8, 8)).shape == (3, 1, 8, 8)
    validate_batch(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        validate_batch(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        validate_batch(torch.full((1, 1, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        validate_batch(torch.full((1, 1, 4, 4), 255.0))
    with pytest.raises(TypeError):
        validate_batch(np.zeros((1, 1, 4, 4)))
