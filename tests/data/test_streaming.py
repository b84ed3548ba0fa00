"""Streaming path: ``glnet data prepare`` shards of the tiny JPEG tree (the ``broken_tree`` fixture) read back by
ImageNetDataModule(streaming=...), compared with the folder path on the same tree."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

pytest.importorskip("litdata")

import litdata  # noqa: E402

import glnet_lightning.data as data_pkg  # noqa: E402
from glnet_lightning.cli.main import main as glnet_main  # noqa: E402
from glnet_lightning.data import ImageNetDataModule, UnreadableImageError  # noqa: E402
from glnet_lightning.data.image_dataset import ImageFolderDataset  # noqa: E402
from glnet_lightning.data.image_folder import validate_layout  # noqa: E402
from glnet_lightning.cli.data import main as prepare_main, parse_size  # noqa: E402
from glnet_lightning.data.streaming import StreamingImageDataset, decode_rgb, read_meta  # noqa: E402
from testkit import BAD_FILES, BROKEN_TREE_CLASSES, save_jpeg

SMALL = {"image_size": 32, "batch_size": 4, "num_workers": 0}


def _prepare(root: Path, output: Path, *extra: str) -> int:
    return prepare_main(["--root", str(root), "--output", str(output), "--quiet", *extra])


@pytest.fixture(scope="module")
def shards(broken_tree, tmp_path_factory) -> Path:
    """Both splits of the tree written by the command, with two writer processes."""
    output = tmp_path_factory.mktemp("shards") / "imagenet"
    assert _prepare(broken_tree, output, "--workers", "2", "--chunk-bytes", "20KB") == 0
    return output


def _both(broken_tree: Path, shards: Path, **kwargs) -> tuple[ImageNetDataModule, ImageNetDataModule]:
    folder = ImageNetDataModule(str(broken_tree), **{**SMALL, **kwargs})
    stream = ImageNetDataModule(streaming=str(shards), **{**SMALL, **kwargs})
    return folder, stream


def _stack(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


# -- what prepare writes ---------------------------------------------------------------------------
def test_shards_hold_the_encoded_files_labels_and_class_list(broken_tree, shards):
    meta = read_meta(str(shards))
    assert meta["classes"] == BROKEN_TREE_CLASSES == validate_layout(broken_tree).classes
    assert meta["splits"]["train"]["num_samples"] == 9 and meta["splits"]["val"]["num_samples"] == 6
    assert meta["splits"]["train"]["num_bad_images"] == 2 and meta["splits"]["val"]["num_bad_images"] == 0
    assert sorted(meta["splits"]["train"]["bad_images"]) == sorted(str(broken_tree / f) for f in BAD_FILES)
    assert len(list((shards / "train").glob("*.bin"))) > 1  # 20KB chunks: several files
    layout = validate_layout(broken_tree)
    for split in ("train", "val"):
        raw = litdata.StreamingDataset(str(shards / split))
        samples = [raw[i] for i in range(len(raw))]
        expected = [layout_sample for layout_sample in getattr(layout, split)
                    if not any(layout_sample[0].endswith(f.split("/", 1)[1]) for f in BAD_FILES)]
        # folder order, the unreadable files left out; the bytes are the files' own, not decoded pixels
        assert [bytes(s["path"]).decode() for s in samples] == [str(Path(p).relative_to(broken_tree / split))
                                                                 for p, _ in expected]
        assert [int(s["label"]) for s in samples] == [label for _, label in expected]
        assert all(bytes(s["image"]) == Path(p).read_bytes() for s, (p, _) in zip(samples, expected))


def test_prepare_prints_progress_and_the_skipped_files(broken_tree, tmp_path, capfd):
    assert prepare_main(["--root", str(broken_tree), "--output", str(tmp_path / "out"), "--splits", "train",
                         "--workers", "1"]) == 0
    out = capfd.readouterr().out  # fd level: the skip lines come from litdata's worker process
    assert "3 classes; train 11 images" in out
    assert "skipping unreadable image: cannot read image file" in out and "cat_bad.JPEG" in out
    assert "train: wrote 9 images" in out and "skipped 2 unreadable" in out and "dog_truncated.JPEG" in out
    assert f"--data.streaming {tmp_path / 'out'}" in out


# -- the data module: same samples as the folder path ---------------------------------------------
def test_streaming_matches_the_folder_path_under_eval_transforms(broken_tree, shards):
    folder, stream = _both(broken_tree, shards)
    folder.setup("validate")
    stream.setup("validate")
    assert stream.class_names == folder.class_names and stream.num_classes == folder.num_classes == 3
    x_folder, y_folder = _stack(folder.val_dataloader())
    x_stream, y_stream = _stack(stream.val_dataloader())
    assert y_stream.tolist() == y_folder.tolist() == [0, 0, 1, 1, 2, 2]
    assert x_stream.shape == (6, 3, 32, 32) and torch.equal(x_stream, x_folder)

    # train split (grayscale and CMYK files included) under the eval transform: same tensors, same labels
    transform = folder.eval_transform()
    folder_train = ImageFolderDataset(validate_layout(broken_tree).train, folder.class_names, transform)
    readable = [folder_train[i] for i in range(len(folder_train))
                if not Path(folder_train.samples.path(i)).name.startswith(("cat_bad", "dog_truncated"))]
    streamed = list(StreamingImageDataset(str(shards / "train"), image_transform=transform))
    assert [y for _, y in streamed] == [y for _, y in readable]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(streamed, readable))


def test_train_loader_gives_whole_batches(shards):
    stream = ImageNetDataModule(streaming=str(shards), **SMALL)
    stream.setup("fit")
    loader = stream.train_dataloader()
    assert isinstance(loader, litdata.StreamingDataLoader) and loader.dataset.shuffle
    for _ in range(2):  # two epochs from the same loader
        batches = list(loader)
        assert [x.shape for x, _ in batches] == [(4, 3, 32, 32)] * 2  # 9 samples: 2 whole batches, as drop_last
        labels = torch.cat([y for _, y in batches])
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}


def test_shuffle_differs_per_epoch(shards):
    dataset = StreamingImageDataset(str(shards / "train"), shuffle=True)
    orders = []
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        orders.append([image.tobytes() for image, _ in dataset])
    in_order = [image.tobytes() for image, _ in StreamingImageDataset(str(shards / "train"))]
    assert sorted(orders[0]) == sorted(orders[1]) == sorted(in_order) and len(set(in_order)) == 9
    assert orders[0] != orders[1] and in_order not in orders


def test_worker_processes_split_the_stream(broken_tree, shards):
    # persistent litdata workers take torch's 5 s join timeout each to shut down: not worth it in a test
    stream = ImageNetDataModule(streaming=str(shards), **{**SMALL, "num_workers": 2, "batch_size": 2},
                                persistent_workers=False)
    stream.setup("validate")
    _, labels = _stack(stream.val_dataloader())
    assert sorted(labels.tolist()) == [0, 0, 1, 1, 2, 2]  # every sample once across the two workers


def test_bad_image_counts_match_the_folder_path(broken_tree, shards):
    folder, stream = _both(broken_tree, shards)
    folder.setup("fit")
    stream.setup("fit")
    for i in range(len(folder.train_set)):
        folder.train_set[i]
    assert stream.bad_image_counts() == folder.bad_image_counts() == {"train": 2, "val": 0}
    assert sorted(Path(p).name for p in stream.train_set.bad_images) == sorted(Path(f).name for f in BAD_FILES)


def test_lightning_fit_and_validate_on_shards(shards, tmp_path):
    class Linear(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(3 * 32 * 32, 3)
            self.seen: list[int] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.head(x.flatten(1)), y)

        def validation_step(self, batch, batch_idx):
            self.seen.extend(batch[1].tolist())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = ImageNetDataModule(streaming=str(shards), **{**SMALL, "auto_augment": None})
    model = Linear()
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2 and sorted(model.seen) == [0, 0, 1, 1, 2, 2]


def test_repeated_augmentation_under_ddp_is_refused(shards):
    stream = ImageNetDataModule(streaming=str(shards), **SMALL)
    stream.trainer = SimpleNamespace(world_size=2, global_rank=0)
    stream.setup("fit")
    with pytest.raises(ValueError, match=r"repeated_aug=True cannot be combined with streaming.*repeated_aug false"):
        stream.train_dataloader()
    plain = ImageNetDataModule(streaming=str(shards), repeated_aug=False, **SMALL)
    plain.trainer = SimpleNamespace(world_size=2, global_rank=0)
    plain.setup("fit")
    assert isinstance(plain.train_dataloader(), litdata.StreamingDataLoader)


# -- errors ----------------------------------------------------------------------------------------
def test_exactly_one_data_source(shards):
    with pytest.raises(ValueError, match="exactly one data source"):
        ImageNetDataModule()
    with pytest.raises(ValueError, match="exactly one data source"):
        ImageNetDataModule("/data/imagenet", streaming=str(shards))


def test_missing_shards_name_the_location(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"streaming location .*nope does not exist"):
        ImageNetDataModule(streaming=str(tmp_path / "nope"), **SMALL).setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no shards written by 'glnet data prepare'"):
        ImageNetDataModule(streaming=str(tmp_path / "empty"), **SMALL).setup("fit")


def test_one_split_then_the_other(broken_tree, tmp_path):
    out = tmp_path / "out"
    assert _prepare(broken_tree, out, "--splits", "val", "--workers", "1") == 0
    dm = ImageNetDataModule(streaming=str(out), **SMALL)
    dm.setup("validate")  # val is enough for validate
    with pytest.raises(FileNotFoundError, match=r"no 'train' shards: run 'glnet data prepare --splits train'"):
        ImageNetDataModule(streaming=str(out), **SMALL).setup("fit")
    assert _prepare(broken_tree, out, "--splits", "train", "--workers", "1") == 0
    assert set(read_meta(str(out))["splits"]) == {"train", "val"}  # the val entry was kept


def test_raise_policy_names_the_file(broken_tree, tmp_path, capsys):
    code = _prepare(broken_tree, tmp_path / "out", "--splits", "train", "--workers", "1", "--on-bad-image", "raise")
    err = capsys.readouterr().err
    assert code == 2
    assert "glnet data prepare: error: cannot read image file" in err and "cat_bad.JPEG" in err
    assert "--on-bad-image skip" in err


def test_decode_error_names_the_sample():
    with pytest.raises(UnreadableImageError, match=r"cannot read image file cat/x.JPEG in s3://b/train"):
        decode_rgb(b"not a jpeg", "cat/x.JPEG in s3://b/train")


def test_cli_help_through_glnet(capsys):
    assert glnet_main(["data", "prepare", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--root", "--output", "--splits", "--workers", "--chunk-bytes", "--on-bad-image", "--overwrite"):
        assert option in out


def test_cli_missing_root(tmp_path, capsys):
    code = glnet_main(["data", "prepare", "--root", str(tmp_path / "nope"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"glnet data prepare: error: dataset root {tmp_path / 'nope'} does not exist" in err
    assert not (tmp_path / "out").exists()


def test_cli_bad_layout(tmp_path, capsys):
    save_jpeg(tmp_path / "root" / "train" / "a" / "a.jpg", size=(8, 8))
    assert _prepare(tmp_path / "root", tmp_path / "out") == 2
    assert "missing 'val/' folder" in capsys.readouterr().err


def test_cli_refuses_to_overwrite_shards(broken_tree, shards, capsys):
    assert _prepare(broken_tree, shards) == 2
    err = capsys.readouterr().err
    assert f"{shards / 'train'}, {shards / 'val'} already hold(s) shards; pass --overwrite" in err


@pytest.mark.parametrize("bad", ["--workers=0", "--chunk-bytes=64XB", "--splits=test"])
def test_cli_usage_errors(broken_tree, tmp_path, bad, capsys):
    assert _prepare(broken_tree, tmp_path / "out", bad) == 2
    assert "error:" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("64MB") == 64_000_000 and parse_size("500k") == 500_000 and parse_size("1e6") == 10**6


def test_missing_litdata_says_how_to_install(monkeypatch, capsys, broken_tree, tmp_path):
    monkeypatch.setitem(sys.modules, "litdata", None)  # import litdata -> ImportError
    monkeypatch.delitem(sys.modules, "glnet_lightning.data.streaming")
    monkeypatch.delattr(data_pkg, "streaming")
    with pytest.raises(ImportError, match=r"pip install glnet-lightning\[streaming\]") as info:
        ImageNetDataModule(streaming="s3://bucket/imagenet")
    assert isinstance(info.value, ValueError)  # what `glnet fit` turns into one error line
    ImageNetDataModule(str(broken_tree))  # the folder path does not need litdata
    assert _prepare(broken_tree, tmp_path / "out") == 2
    assert "pip install glnet-lightning[streaming]" in capsys.readouterr().err
