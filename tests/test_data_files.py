"""``--data PATH``: folders of class subfolders, .npz and .safetensors files, and the one-image
check of a model against its data (robustlab.data_files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from robustlab.data import DataError
from robustlab.data_files import check_model_input, data_identity, load_data_path

RNG = np.random.default_rng(0)


def _folder(root, images: dict[str, list[np.ndarray]]):
    for cls, arrs in images.items():
        (root / cls).mkdir(parents=True)
        for i, a in enumerate(arrs):
            Image.fromarray(a).save(root / cls / f"{i}.png")
    return root


def test_png_folder_sorted_class_names_are_the_labels(tmp_path):
    imgs = {name: [RNG.integers(0, 256, (6, 5), dtype=np.uint8) for _ in range(k)] for name, k in (("b", 2), ("a", 3))}
    x, y, info = load_data_path(_folder(tmp_path / "d", imgs))
    assert x.shape == (5, 1, 6, 5) and x.dtype == torch.float32
    assert y.tolist() == [0, 0, 0, 1, 1] and info.class_names == ("a", "b") and info.num_classes == 2
    assert torch.equal(x[0, 0], torch.from_numpy(imgs["a"][0].astype(np.float32) / 255))
    ident = data_identity(tmp_path / "d", len(y))
    assert ident["kind"] == "folder" and len(ident["sha256"]) == 64 and ident["n"] == 5


def test_rgb_and_gray_mixed_become_rgb(tmp_path):
    gray = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    rgb = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    x, _, info = load_data_path(_folder(tmp_path / "d", {"a": [gray], "b": [rgb]}))
    assert x.shape == (2, 3, 4, 4) and info.shape == (3, 4, 4)
    assert torch.equal(x[0, 0], x[0, 2]) and torch.equal(x[1, 1], torch.from_numpy(rgb[..., 1] / 255.0).float())


def test_broken_image_and_mixed_sizes_name_the_file(tmp_path):
    root = _folder(tmp_path / "d", {"a": [np.zeros((4, 4), np.uint8)]})
    (root / "a" / "z.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"a/z\.png: cannot read this image"):
        load_data_path(root)
    (root / "a" / "z.png").unlink()
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(root / "a" / "y.png")
    with pytest.raises(DataError, match=r"y\.png: image is 4x5 .* all images must have one size"):
        load_data_path(root)


def test_npz_nhwc_uint8_and_safetensors_float(tmp_path):
    from safetensors.numpy import save_file

    x8 = RNG.integers(0, 256, (6, 7, 7, 3), dtype=np.uint8)
    y = np.arange(6) % 3
    np.savez(tmp_path / "d.npz", x=x8, y=y)
    x, yt, info = load_data_path(tmp_path / "d.npz")
    assert x.shape == (6, 3, 7, 7) and info.num_classes == 3 and yt.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(x8.transpose(0, 3, 1, 2).astype(np.float32) / 255))
    save_file({"x": x.numpy(), "y": y.astype(np.int64)}, str(tmp_path / "d.safetensors"))
    x2, y2, _ = load_data_path(tmp_path / "d.safetensors")
    assert torch.equal(x2, x) and torch.equal(y2, yt)


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((2, 1, 4, 4), np.float32)}, "no y array"),
    ({"x": np.full((2, 1, 4, 4), 2.0, np.float32), "y": np.zeros(2, np.int64)}, r"outside \[0, 1\]"),
    ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.zeros(3, np.int64)}, r"y has shape \(3,\)"),
    ({"x": np.zeros((2, 5, 4, 6), np.float32), "y": np.zeros(2, np.int64)}, "neither axis 1 nor axis 3"),
])
def test_bad_array_files_are_refused_naming_the_file(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as e:
        load_data_path(tmp_path / "bad.npz")
    assert "bad.npz" in str(e.value)


def test_model_input_check_names_expected_and_given_shape():
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match=r"expects 1-channel images .* holds 3x8x8"):
        check_model_input(conv, torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), "pngs")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(ValueError, match=r"does not take the images of pngs: got 1x16x16 .*Linear\(in_features=64"):
        check_model_input(mlp, torch.rand(2, 1, 16, 16), torch.zeros(2, dtype=torch.long), "pngs")
    with pytest.raises(ValueError, match="gives 10 classes, but pngs has label 12"):
        check_model_input(mlp, torch.rand(2, 1, 8, 8), torch.tensor([0, 12]), "pngs")
    assert check_model_input(mlp, torch.rand(2, 1, 8, 8), torch.tensor([0, 9]), "pngs") == 10
