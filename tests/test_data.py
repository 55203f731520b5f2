"""Tests for robustlab.data: real Fashion-MNIST, digits, synthetic and corrupt IDX/CIFAR files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlab import data
from robustlab.data import DATASETS, DataError, DatasetInfo, load_dataset, read_idx

HAVE_FASHION = all(
    (Path(data.FASHION_MNIST_ROOT) / f).is_file()
    for f in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
)
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION, reason="apt-get install dataset-fashion-mnist"
)


# --------------------------------------------------------------------------------------------
# helpers


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | arr.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx_set(root: Path, n_train: int = 7, n_test: int = 5, gz: bool = True, seed: int = 0):
    """Writes all four MNIST-style files; returns {split: (images uint8, labels uint8)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, (img, lab), n in (
        ("train", data._IDX_FILES["train"], n_train),
        ("test", data._IDX_FILES["test"], n_test),
    ):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[0, 0, 0], x[0, 0, 1] = 0, 255
        y = (np.arange(n) % 10).astype(np.uint8)
        write(root / img, idx_bytes(x), gz)
        write(root / lab, idx_bytes(y), gz)
        out[split] = (x, y)
    return out


def make_idx_set_fresh(root: Path, **kw):
    for f in root.iterdir():
        f.unlink()
    return make_idx_set(root, **kw)


def cifar_record(label: int, img: np.ndarray) -> bytes:
    return bytes([label]) + np.ascontiguousarray(img, dtype=np.uint8).tobytes()


def make_cifar(parent: Path, n: int = 5, meta: str | None = None, seed: int = 0):
    """Writes cifar-10-batches-bin/ with n records per file; returns {split: (x, y)} uint8."""
    folder = parent / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[list, list]] = {"train": ([], []), "test": ([], [])}
    for split, files in data._CIFAR_FILES.items():
        for f in files:
            recs = []
            for _ in range(n):
                lab = int(rng.integers(0, 10))
                img = rng.integers(0, 256, size=(3, 32, 32), dtype=np.uint8)
                recs.append(cifar_record(lab, img))
                out[split][0].append(img)
                out[split][1].append(lab)
            (folder / f).write_bytes(b"".join(recs))
    if meta is not None:
        (folder / "batches.meta.txt").write_text(meta)
    return folder, {k: (np.stack(v[0]), np.array(v[1])) for k, v in out.items()}


def assert_error_names(excinfo, path: Path) -> str:
    msg = str(excinfo.value)
    assert str(path) in msg, msg
    return msg


# --------------------------------------------------------------------------------------------
# real Fashion-MNIST


@needs_fashion
def test_fashion_mnist_train_real():
    x, y, info = load_dataset("fashion-mnist", "train")
    assert x.shape == (60000, 1, 28, 28)
    assert x.dtype == torch.float32 and x.is_contiguous()
    assert x.min().item() == 0.0 and x.max().item() == 1.0
    assert y.dtype == torch.int64 and y.shape == (60000,)
    assert torch.bincount(y, minlength=10).tolist() == [6000] * 10
    assert info == DatasetInfo(
        name="fashion-mnist",
        split="train",
        class_names=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        shape=(1, 28, 28),
        num_classes=10,
        root=str(Path(data.FASHION_MNIST_ROOT).resolve()),
    )
    d = info.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["shape"] == [1, 28, 28] and d["class_names"][9] == "Ankle boot"


@needs_fashion
def test_fashion_mnist_test_real_and_cache_isolated():
    x, y, info = load_dataset("fashion-mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert info.split == "test"
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    # Mutating the returned tensors must not leak into the next call (cache safety).
    x0, y0 = x[0].clone(), y[0].item()
    x.fill_(0.5)
    y.fill_(7)
    x2, y2, _ = load_dataset("fashion-mnist", "test")
    assert torch.equal(x2[0], x0) and y2[0].item() == y0
    assert x2.data_ptr() != x.data_ptr()


# --------------------------------------------------------------------------------------------
# digits


def test_digits_split():
    xtr, ytr, itr = load_dataset("digits", "train")
    xte, yte, ite = load_dataset("digits", "test")
    assert xtr.shape[1:] == (1, 8, 8) and xte.shape[1:] == (1, 8, 8)
    assert xtr.shape[0] + xte.shape[0] == 1797
    assert (xtr.shape[0], xte.shape[0]) == (1347, 450)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert xtr.is_contiguous() and xte.is_contiguous()
    assert 0.0 <= xtr.min().item() and xtr.max().item() == 1.0
    assert set(yte.tolist()) == set(range(10)) and set(ytr.tolist()) == set(range(10))
    assert itr.shape == (1, 8, 8) and itr.root is None and itr.num_classes == 10
    assert ite.class_names == tuple(str(i) for i in range(10))
    # Deterministic, and the fresh tensors don't share storage with the cache.
    xtr.zero_()
    xtr2, ytr2, _ = load_dataset("digits", "train")
    assert xtr2.abs().sum() > 0
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    _, x_ref, _, y_ref = train_test_split(
        d.data, d.target, test_size=0.25, random_state=0, stratify=d.target
    )
    assert torch.equal(yte, torch.from_numpy(y_ref.astype(np.int64)))
    assert torch.equal(xte.flatten(1), torch.from_numpy((x_ref / 16).astype(np.float32)))


def test_digits_rejects_root(tmp_path):
    with pytest.raises(ValueError, match="root"):
        load_dataset("digits", "train", root=tmp_path)


# --------------------------------------------------------------------------------------------
# synthetic IDX


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_mnist_synthetic_roundtrip(tmp_path, gz):
    ref = make_idx_set(tmp_path, gz=gz)
    for split in ("train", "test"):
        x, y, info = load_dataset("mnist", split, root=tmp_path)
        xu, yu = ref[split]
        assert x.shape == (len(xu), 1, 28, 28) and x.dtype == torch.float32
        assert torch.equal(x, torch.from_numpy(xu).float().unsqueeze(1) / 255)
        assert torch.equal(y, torch.from_numpy(yu).long())
        assert info.name == "mnist" and info.class_names == tuple("0123456789")
        assert info.root == str(tmp_path.resolve())
    assert x[0, 0, 0, 0].item() == 0.0 and x[0, 0, 0, 1].item() == 1.0


def test_fashion_mnist_custom_root(tmp_path):
    ref = make_idx_set(tmp_path, gz=False)
    x, y, info = load_dataset("fashion-mnist", "test", root=str(tmp_path))
    assert torch.equal(y, torch.from_numpy(ref["test"][1]).long())
    assert info.class_names[0] == "T-shirt/top" and info.root == str(tmp_path.resolve())


def test_cache_sees_rewritten_files(tmp_path):
    make_idx_set(tmp_path, n_test=5, seed=1)
    x1, _, _ = load_dataset("mnist", "test", root=tmp_path)
    ref = make_idx_set_fresh(tmp_path, n_test=3, seed=2)
    x2, y2, _ = load_dataset("mnist", "test", root=tmp_path)
    assert x1.shape[0] == 5 and x2.shape[0] == 3
    assert torch.equal(x2, torch.from_numpy(ref["test"][0]).float().unsqueeze(1) / 255)


def test_read_idx_public(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    p = write(tmp_path / "a-idx3-ubyte", idx_bytes(arr), gz=True)
    out = read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    assert np.array_equal(out, arr)
    with pytest.raises(DataError) as e:
        read_idx(p, ndim=1)
    assert_error_names(e, p)


# --------------------------------------------------------------------------------------------
# corrupt IDX


def _corrupt(tmp_path: Path, which: str, payload: bytes, gz: bool = True) -> Path:
    """Valid set in tmp_path, then the train images ('img') or labels ('lab') file replaced."""
    make_idx_set(tmp_path, gz=gz)
    img, lab = data._IDX_FILES["train"]
    name = img if which == "img" else lab
    target = tmp_path / (name + (".gz" if gz else ""))
    if gz:
        target.write_bytes(gzip.compress(payload))
    else:
        target.write_bytes(payload)
    return target


def _load_err(tmp_path: Path, name: str = "mnist") -> pytest.ExceptionInfo:
    with pytest.raises(DataError) as e:
        load_dataset(name, "train", root=tmp_path)
    return e


GOOD_IMAGES = np.zeros((7, 28, 28), dtype=np.uint8)
GOOD_LABELS = (np.arange(7) % 10).astype(np.uint8)


def test_wrong_magic(tmp_path):
    bad = b"\x12\x34" + idx_bytes(GOOD_IMAGES)[2:]
    p = _corrupt(tmp_path, "img", bad)
    msg = assert_error_names(_load_err(tmp_path), p)
    assert "magic" in msg and "root=" in msg


def test_swapped_label_file_for_images(tmp_path):
    p = _corrupt(tmp_path, "img", idx_bytes(GOOD_LABELS))  # 1-d magic where 3-d expected
    msg = assert_error_names(_load_err(tmp_path), p)
    assert "0x00000801" in msg and "expected 3" in msg


def test_wrong_dtype_code(tmp_path):
    bad = idx_bytes(GOOD_IMAGES, magic=0x0D03)  # float32 code, same byte count is irrelevant
    p = _corrupt(tmp_path, "img", bad)
    msg = assert_error_names(_load_err(tmp_path), p)
    assert "0x0D" in msg and "unsigned byte" in msg


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_truncated_file_size_mismatch(tmp_path, gz):
    p = _corrupt(tmp_path, "img", idx_bytes(GOOD_IMAGES)[:-100], gz=gz)
    msg = assert_error_names(_load_err(tmp_path), p)
    assert "size mismatch" in msg


def test_padded_file_size_mismatch(tmp_path):
    p = _corrupt(tmp_path, "lab", idx_bytes(GOOD_LABELS) + b"\x00")
    assert "size mismatch" in assert_error_names(_load_err(tmp_path), p)


def test_truncated_header(tmp_path):
    p = _corrupt(tmp_path, "img", idx_bytes(GOOD_IMAGES)[:9])
    assert "header" in assert_error_names(_load_err(tmp_path), p)


def test_truncated_gzip(tmp_path):
    make_idx_set(tmp_path, gz=True)
    p = tmp_path / (data._IDX_FILES["train"][0] + ".gz")
    blob = p.read_bytes()
    p.write_bytes(blob[: len(blob) // 2])
    msg = assert_error_names(_load_err(tmp_path), p)
    assert "gzip" in msg


def test_corrupt_gzip_crc(tmp_path):
    make_idx_set(tmp_path, gz=True)
    p = tmp_path / (data._IDX_FILES["train"][1] + ".gz")
    blob = bytearray(p.read_bytes())
    blob[-8] ^= 0xFF  # CRC32 in the trailer
    p.write_bytes(bytes(blob))
    assert "gzip" in assert_error_names(_load_err(tmp_path), p)


def test_count_mismatch(tmp_path):
    p = _corrupt(tmp_path, "lab", idx_bytes(GOOD_LABELS[:6]))
    msg = assert_error_names(_load_err(tmp_path), p)
    assert "6 labels" in msg and "7 images" in msg


def test_label_out_of_range(tmp_path):
    lab = GOOD_LABELS.copy()
    lab[4] = 10
    p = _corrupt(tmp_path, "lab", idx_bytes(lab))
    msg = assert_error_names(_load_err(tmp_path), p)
    assert "label 10 at index 4" in msg


def test_missing_file_custom_root(tmp_path):
    e = _load_err(tmp_path, "fashion-mnist")
    msg = assert_error_names(e, tmp_path / "train-images-idx3-ubyte.gz")
    assert "root=" in msg


def test_missing_one_file_custom_root(tmp_path):
    make_idx_set(tmp_path)
    p = tmp_path / (data._IDX_FILES["train"][1] + ".gz")
    p.unlink()
    msg = assert_error_names(_load_err(tmp_path), p)
    assert "not found" in msg


def test_missing_file_default_root_apt_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_ROOT", str(tmp_path))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", "test")
    msg = assert_error_names(e, tmp_path / "t10k-images-idx3-ubyte.gz")
    assert "apt-get install dataset-fashion-mnist" in msg


def test_missing_root_dir(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "train", root=missing)
    assert_error_names(e, missing)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# --------------------------------------------------------------------------------------------
# synthetic CIFAR-10 (binary)


def test_cifar_roundtrip_and_layout(tmp_path):
    folder, ref = make_cifar(tmp_path)
    # Record 2 of the test batch: red plane all 255, green/blue 0 (channel-major check).
    red = np.zeros((3, 32, 32), dtype=np.uint8)
    red[0] = 255
    blob = bytearray((folder / "test_batch.bin").read_bytes())
    blob[2 * 3073 : 3 * 3073] = cifar_record(3, red)
    (folder / "test_batch.bin").write_bytes(bytes(blob))
    ref["test"][0][2], ref["test"][1][2] = red, 3

    for split, n in (("train", 25), ("test", 5)):
        x, y, info = load_dataset("cifar10", split, root=folder)
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
        assert torch.equal(x, torch.from_numpy(ref[split][0]).float() / 255)
        assert torch.equal(y, torch.from_numpy(ref[split][1]).long())
        assert info.shape == (3, 32, 32) and info.num_classes == 10
        assert info.class_names == data.CIFAR10_CLASSES
        assert info.root == str(folder.resolve())
    x, y, _ = load_dataset("cifar10", "test", root=folder)
    assert torch.all(x[2, 0] == 1.0) and torch.all(x[2, 1:] == 0.0) and y[2].item() == 3


def test_cifar_parent_root_and_meta(tmp_path):
    names = [f"class{i}" for i in range(10)]
    folder, ref = make_cifar(tmp_path, meta="\n".join(names) + "\n\n")
    x, y, info = load_dataset("cifar10", "test", root=tmp_path)
    assert info.root == str(folder.resolve())
    assert info.class_names == tuple(names)
    assert torch.equal(y, torch.from_numpy(ref["test"][1]).long())


def test_cifar_bad_meta(tmp_path):
    folder, _ = make_cifar(tmp_path, meta="a\nb\n")
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "test", root=folder)
    assert_error_names(e, folder / "batches.meta.txt")


def test_cifar_size_not_multiple(tmp_path):
    folder, _ = make_cifar(tmp_path)
    p = folder / "data_batch_3.bin"
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", root=tmp_path)
    assert "3073" in assert_error_names(e, p)


def test_cifar_label_out_of_range(tmp_path):
    folder, _ = make_cifar(tmp_path)
    p = folder / "test_batch.bin"
    blob = bytearray(p.read_bytes())
    blob[3073] = 10  # label byte of record 1
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "test", root=folder)
    assert "label 10 at index 1" in assert_error_names(e, p)


def test_cifar_missing_batch(tmp_path):
    folder, _ = make_cifar(tmp_path)
    (folder / "data_batch_5.bin").unlink()
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "train", root=folder)
    assert "binary" in assert_error_names(e, folder / "data_batch_5.bin")


def test_cifar_pickle_version_refused(tmp_path):
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    (py / "data_batch_1").write_bytes(b"\x80\x04not really a pickle")
    for root in (py, tmp_path):
        with pytest.raises(DataError) as e:
            load_dataset("cifar10", "train", root=root)
        msg = assert_error_names(e, py)
        assert "binary" in msg


def test_cifar_empty_dir(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cifar10", "test", root=tmp_path)
    assert "binary" in assert_error_names(e, tmp_path)


# --------------------------------------------------------------------------------------------
# argument validation


def test_root_required():
    with pytest.raises(ValueError, match="root") as e:
        load_dataset("mnist", "train")
    assert not isinstance(e.value, DataError)
    with pytest.raises(ValueError, match="root"):
        load_dataset("cifar10", "test")


def test_unknown_name_and_split():
    with pytest.raises(ValueError) as e:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(e.value)
    with pytest.raises(ValueError) as e:
        load_dataset("digits", "val")
    assert "train" in str(e.value) and "test" in str(e.value)
    with pytest.raises(ValueError):
        load_dataset(None)  # type: ignore[arg-type]


def test_name_spellings():
    _, _, i1 = load_dataset("Digits", " TEST ")
    assert i1.name == "digits" and i1.split == "test"
    assert DATASETS == ("fashion-mnist", "mnist", "cifar10", "digits")
