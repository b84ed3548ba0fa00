"""FashionMNISTDataModule on the Debian package files, plus its error paths."""
from __future__ import annotations

import gzip
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from glnet_lightning.data import FashionMNISTDataModule, find_system_fashion_mnist
from glnet_lightning.data.collate import GrayscaleBatchCollate
from glnet_lightning.data.fashion_mnist import FILE_NAMES, FashionMNISTNotFoundError, locate_fashion_mnist_files
from glnet_lightning.errors import UserError
from glnet_lightning.data.idx import read_idx
from glnet_lightning.data.tensor_ops import random_crop_flip

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def dm() -> FashionMNISTDataModule:
    module = FashionMNISTDataModule(batch_size=500, num_workers=0, download=False)
    module.prepare_data()
    module.setup("fit")
    module.setup("test")
    return module


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def _tiny_dataset(directory: Path, n_train: int = 40, n_test: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(directory / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(directory / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    return directory


# -- the real data set ---------------------------------------------------------------------------
def test_system_copy_is_found():
    assert find_system_fashion_mnist() == SYSTEM_DIR
    assert FashionMNISTDataModule(num_workers=0).data_dir == SYSTEM_DIR


def test_split_sizes_and_disjoint_validation_slice(dm):
    assert len(dm.train_set) == 55_000
    assert len(dm.val_set) == 5_000
    assert len(dm.test_set) == 10_000
    together = torch.cat([dm.train_indices, dm.val_indices])
    assert torch.equal(together.sort().values, torch.arange(60_000))


def test_validation_slice_is_deterministic_in_seed(dm):
    same = FashionMNISTDataModule(num_workers=0, seed=0)
    other = FashionMNISTDataModule(num_workers=0, seed=1)
    same.setup("fit")
    other.setup("fit")
    assert torch.equal(same.val_indices, dm.val_indices)
    assert torch.equal(same.val_set.labels, dm.val_set.labels)
    assert not torch.equal(other.val_indices, dm.val_indices)


def test_train_batch_shape_dtype_and_labels(dm):
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (500, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (500,) and y.dtype == torch.int64
    assert 0 <= int(y.min()) and int(y.max()) <= 9
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grayscale replicated


def test_labels_cover_all_classes_and_are_balanced(dm):
    counts = torch.bincount(dm.test_set.labels, minlength=10)
    assert counts.tolist() == [1000] * 10
    assert dm.num_classes == 10 and len(dm.class_names) == 10
    assert len(dm.mean) == len(dm.std) == 3


def test_eval_batches_are_normalised(dm):
    xs = torch.cat([x for x, _ in dm.val_dataloader()])
    assert xs.shape == (5_000, 3, 32, 32)
    assert abs(float(xs.mean())) < 0.05
    assert 0.85 < float(xs.std()) < 1.1


def test_eval_loader_is_not_shuffled_and_not_augmented(dm):
    first = next(iter(dm.test_dataloader()))
    second = next(iter(dm.predict_dataloader()))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], dm.test_set.labels[:500])
    assert len(dm.predict_dataloader().dataset) == 10_000


def test_train_augmentation_changes_images_but_not_statistics(dm):
    images = dm.val_set.images[:256]
    plain = GrayscaleBatchCollate(32, 0.286, 0.353, train=False).transform(images)
    torch.manual_seed(0)
    augmented = GrayscaleBatchCollate(32, 0.286, 0.353, train=True).transform(images)
    assert augmented.shape == plain.shape
    assert not torch.equal(augmented, plain)
    assert abs(float(augmented.mean()) - float(plain.mean())) < 0.1


@pytest.mark.parametrize("size", [28, 64])
def test_other_image_sizes(size):
    module = FashionMNISTDataModule(image_size=size, batch_size=8, num_workers=0, val_size=100)
    module.setup("validate")
    x, _ = next(iter(module.val_dataloader()))
    assert x.shape == (8, 3, size, size)


def test_loader_settings_follow_num_workers():
    assert FashionMNISTDataModule(num_workers=0).persistent_workers is False
    assert FashionMNISTDataModule(num_workers=2).persistent_workers is True
    assert FashionMNISTDataModule(num_workers=2, persistent_workers=False).persistent_workers is False
    collate = pickle.loads(pickle.dumps(GrayscaleBatchCollate(32, 0.5, 0.5, train=True)))
    assert collate.train and collate.padding == 4


def test_worker_process_loading(tmp_path):
    module = FashionMNISTDataModule(root=str(_tiny_dataset(tmp_path)), batch_size=4, num_workers=1, val_size=8)
    module.setup("fit")
    loader = module.train_dataloader()
    assert loader.persistent_workers
    batches = list(loader)
    assert len(batches) == 8 and batches[0][0].shape == (4, 3, 32, 32)


# -- tensor ops --------------------------------------------------------------------------------
def test_random_crop_is_a_shifted_window_of_the_padded_image():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = random_crop_flip(images, padding=2, flip_prob=0.0, generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, t : t + 6, l : l + 6] for t in range(5) for l in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_with_probability_one_mirrors():
    images = torch.rand(3, 1, 5, 5)
    assert torch.equal(random_crop_flip(images, padding=0, flip_prob=1.0), images.flip(-1))


# -- errors ----------------------------------------------------------------------------------------
@pytest.fixture
def no_downloads(monkeypatch) -> list:
    """torchvision's downloader, replaced by one that records that it was called (no network here)."""
    import torchvision.datasets

    calls = []
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", lambda *args, **kwargs: calls.append(args))
    return calls


@pytest.mark.parametrize("download", [True, False])
def test_a_root_given_must_hold_the_files_and_is_never_downloaded_into(tmp_path, no_downloads, download):
    """A mistyped root fails in the constructor (one line: the option, the path, the files, the package),
    creates nothing and downloads nothing, whatever ``download`` says."""
    missing = tmp_path / "nowhere"
    with pytest.raises(FashionMNISTNotFoundError) as info:
        FashionMNISTDataModule(root=str(missing), download=download, num_workers=0)
    message = str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, FileNotFoundError)
    assert message.startswith(f"--data.root {missing} does not exist;") and "\n" not in message
    assert "dataset-fashion-mnist" in message and "t10k-labels-idx1-ubyte[.gz]" in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(FashionMNISTNotFoundError, match=r"empty \(or its FashionMNIST/raw/\) has no train-images"):
        FashionMNISTDataModule(root=str(tmp_path / "empty"), download=download, num_workers=0)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["empty"] and no_downloads == []


def test_no_copy_anywhere_and_downloads_off_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("glnet_lightning.data.fashion_mnist.SYSTEM_DIRS", (tmp_path / "no-system-copy",))
    with pytest.raises(FashionMNISTNotFoundError, match=r"--data.download is false: set it true to download, or "
                       r"install the Debian package dataset-fashion-mnist"):
        FashionMNISTDataModule(num_workers=0, download=False)


def test_root_without_files_lists_what_is_missing(tmp_path):
    shutil.copy(SYSTEM_DIR / "train-labels-idx1-ubyte.gz", tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        locate_fashion_mnist_files(tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte[.gz]" in message and "t10k-labels-idx1-ubyte[.gz]" in message
    assert "train-labels" not in message


def test_truncated_gzip_names_the_file(tmp_path):
    data = (SYSTEM_DIR / "train-labels-idx1-ubyte.gz").read_bytes()
    bad = tmp_path / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz is truncated"):
        read_idx(bad)


def test_corrupt_gzip_names_the_file(tmp_path):
    data = bytearray((SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    data[-8:] = b"\xff" * 8  # damage the CRC / size trailer
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte\.gz is corrupt"):
        read_idx(bad)


def test_short_data_section_is_reported_as_truncated(tmp_path):
    path = _write_idx(tmp_path / "images.idx", np.zeros((5, 28, 28)), compress=False)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"images\.idx is truncated.*\(5, 28, 28\)"):
        read_idx(path)


def test_bad_magic_number(tmp_path):
    path = tmp_path / "labels.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match=r"labels\.idx has a bad magic number 12340801"):
        read_idx(path)


def test_wrong_number_of_dimensions(tmp_path):
    path = _write_idx(tmp_path / "labels.gz", np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"labels\.gz has 2 dimensions, expected 1"):
        read_idx(path, expected_ndim=1)


def test_corrupt_file_inside_a_data_root_fails_setup_with_its_name(tmp_path):
    _tiny_dataset(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not a gzip and not idx")
    module = FashionMNISTDataModule(root=str(tmp_path), num_workers=0, val_size=8)
    module.setup("fit")  # train files are fine
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz has a bad magic number"):
        module.setup("test")


def test_label_count_mismatch_names_both_files(tmp_path):
    _tiny_dataset(tmp_path)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(39))
    module = FashionMNISTDataModule(root=str(tmp_path), num_workers=0, val_size=8)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz has 40 images but .*train-labels"):
        module.setup("fit")


def test_val_size_must_leave_training_images(tmp_path):
    module = FashionMNISTDataModule(root=str(_tiny_dataset(tmp_path)), num_workers=0, val_size=40)
    with pytest.raises(ValueError, match="val_size=40"):
        module.setup("fit")


def test_uncompressed_torchvision_layout_is_read(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    _tiny_dataset(raw)
    for name in FILE_NAMES.values():  # torchvision keeps the extracted copies next to the .gz
        (raw / name).write_bytes(gzip.decompress((raw / f"{name}.gz").read_bytes()))
        (raw / f"{name}.gz").unlink()
    module = FashionMNISTDataModule(root=str(tmp_path), num_workers=0, val_size=8, batch_size=16)
    module.setup("fit")
    assert len(module.train_set) == 32 and len(module.val_set) == 8


# -- download fallback (torchvision's downloader replaced: no network here) ---------------------------
def test_without_system_copy_downloads_into_user_cache(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_fashion_mnist(root, train=True, download=False):
        calls.append((root, download))
        raw = Path(root) / "FashionMNIST" / "raw"  # where torchvision puts the files
        raw.mkdir(parents=True, exist_ok=True)
        _tiny_dataset(raw)

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("glnet_lightning.data.fashion_mnist.SYSTEM_DIRS", (tmp_path / "no-system-copy",))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_fashion_mnist)
    assert find_system_fashion_mnist() is None
    module = FashionMNISTDataModule(num_workers=0, val_size=8)
    assert module.data_dir == tmp_path / ".cache" / "glnet_lightning" / "fashion_mnist"
    module.prepare_data()
    module.prepare_data()  # files now present: no second download
    assert calls == [(str(module.data_dir), True)]
    module.setup("fit")
    assert len(module.train_set) == 32


def test_failed_download_names_the_directory(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, train=True, download=False):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr("glnet_lightning.data.fashion_mnist.SYSTEM_DIRS", (tmp_path / "no-system-copy",))
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    module = FashionMNISTDataModule(num_workers=0)
    with pytest.raises(FashionMNISTNotFoundError, match=r"could not download Fashion-MNIST into .*fashion_mnist: "
                       r"Temporary failure.*dataset-fashion-mnist"):
        module.prepare_data()


# -- with a Trainer -------------------------------------------------------------------------------
class _TinyClassifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3 * 8 * 8, 10)
        self.seen: dict[str, int] = {"train": 0, "val": 0, "test": 0}

    def _step(self, batch, stage):
        x, y = batch
        assert x.shape[1:] == (3, 8, 8)
        self.seen[stage] += len(y)
        return torch.nn.functional.cross_entropy(self.head(x.flatten(1)), y)

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("val_size", [64, 0])
def test_trainer_runs_fit_and_test(tmp_path, val_size):
    module = FashionMNISTDataModule(image_size=8, batch_size=32, num_workers=0, val_size=val_size)
    model = _TinyClassifier()
    trainer = Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=3, limit_val_batches=2, limit_test_batches=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=module)
    trainer.test(model, datamodule=module, verbose=False)
    assert model.seen == {"train": 96, "val": 64 if val_size else 0, "test": 32}
