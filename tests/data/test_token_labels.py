"""Token labeling's data: LV-ViT label maps loaded beside the training images and moved with them.

The property that matters: after the crop, flip and geometric RandAugment operations, RoIAlign of
the moved map over the recorded box gives the labels of the pixels the crop shows. Synthetic images
whose pixel values encode their position or class make that checkable pixel by pixel."""
from __future__ import annotations

import pickle
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.auto_augment import AugmentOp, RandAugment
from timm.data.random_erasing import RandomErasing
from timm.data.transforms import MaybeToTensor, RandomResizedCropAndInterpolation
from torchvision import transforms as tv

from glnet_lightning.data import ImageNetDataModule, TokenLabelFileError
from glnet_lightning.data.token_labels import LabelMapTrainTransform
from glnet_lightning.token_labeling import TokenLabelError, token_label_targets

FILL = (255, 0, 255)  # the fill colour of the geometric operations: no class has it


def _module(root: Path, labels: Path, **kwargs) -> ImageNetDataModule:
    kwargs = {"image_size": 32, "batch_size": 4, "num_workers": 0, **kwargs}
    return ImageNetDataModule(str(root), token_labels=str(labels), **kwargs)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _copy(tree: Path, labels: Path, tmp_path: Path) -> tuple[Path, Path]:
    return Path(shutil.copytree(tree, tmp_path / "tree")), Path(shutil.copytree(labels, tmp_path / "labels"))


def _label_of(labels: Path, dataset, index: int) -> Path:
    relative = Path(dataset.samples.path(index)).relative_to(dataset.samples.root)
    return labels / relative.with_suffix(".pt")


# -- batches ---------------------------------------------------------------------------------------
def test_training_batches_carry_moved_label_maps_box_and_class(imagenet_tree, imagenet_token_labels):
    dm = _module(imagenet_tree, imagenet_token_labels)
    dm.setup("fit")
    images, maps = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and maps.shape == (4, 3, 3, 8, 8) and maps.dtype == torch.float32
    dataset = dm.train_set
    for index in range(len(dataset)):
        _, label_map = dataset[index]
        stored = torch.load(_label_of(imagenet_token_labels, dataset, index))
        x, y, w, h = label_map[2, 0, 0, :4].tolist()
        assert 0 <= x and 0 <= y and 0 < w and 0 < h and x + w <= 1 + 1e-6 and y + h <= 1 + 1e-6
        assert int(label_map[2, 0, 0, 5]) == dataset.targets[index]
        rest = label_map[2].clone()
        rest[0, 0, :6] = 0
        assert not rest.any()  # the third row holds the box and the class only
        assert set(label_map[1].unique().tolist()) <= set(stored[1].unique().tolist())
    xs, ys = next(iter(dm.val_dataloader()))  # validation: plain class indices
    assert xs.shape == (4, 3, 32, 32) and ys.dtype == torch.int64 and ys.shape == (4,)
    targets = token_label_targets(maps, dm.num_classes, label_size=2)
    assert targets.shape == (4, 4, 2 + 4)
    assert torch.equal(targets[:, :, 0].argmax(1), maps[:, 2, 0, 0, 5].long())


def test_images_are_augmented_exactly_as_without_token_labels(imagenet_tree):
    dm = ImageNetDataModule(str(imagenet_tree), image_size=32, re_prob=0.5)
    plain, with_labels = dm.train_transform(), dm.token_label_transform()
    image = Image.open(next((imagenet_tree / "train").rglob("*.JPEG"))).convert("RGB")
    label_map = torch.rand(2, 3, 8, 8)
    for seed in range(12):
        _seed(seed)
        expected = plain(image)
        _seed(seed)
        assert torch.equal(with_labels(image, label_map)[0], expected)


# -- the crop box and flips ------------------------------------------------------------------------
def _ramp(width: int = 256, height: int = 128) -> Image.Image:
    """Red grows with x (1 per pixel), green with y (2 per pixel): a pixel's colour says where it came from."""
    x = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :], (height, width))
    y = np.broadcast_to((2 * np.arange(height)).astype(np.uint8)[:, None], (height, width))
    return Image.fromarray(np.stack([x, y, np.zeros_like(x)], axis=-1), "RGB")


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_the_box_is_where_the_crop_came_from_and_a_flip_mirrors_it(flip):
    steps = [RandomResizedCropAndInterpolation(32, interpolation="bilinear"), tv.RandomHorizontalFlip(flip),
             MaybeToTensor()]
    transform = LabelMapTrainTransform(tv.Compose(steps))
    label_map = torch.rand(2, 3, 8, 8)
    image = _ramp()
    centres = (torch.arange(32) + 0.5) / 32
    for seed in range(8):
        _seed(seed)
        out, moved = transform(image, label_map)
        x, y, w, h = moved[2, 0, 0, :4].tolist()
        # where each output column / row samples the image, in fractions of the (flipped) image
        frac_x, frac_y = x + centres * w, y + centres * h
        if flip:
            frac_x = 1 - frac_x  # the box is in the flipped image; the ramp runs the other way there
        red, green = out[0].mean(0) * 255, out[1].mean(1) * 255
        inner = slice(2, -2)  # away from the crop's edges, where the resampling filter is cut off
        assert (red - (256 * frac_x - 0.5))[inner].abs().max() < 1.5
        assert (green - (256 * frac_y - 1.0))[inner].abs().max() < 2.5
        assert torch.equal(moved[:2], label_map.flip(-1) if flip else label_map)  # no pixel moved within the crop


def _halves(width: int = 128, height: int = 96) -> tuple[Image.Image, torch.Tensor]:
    """An image whose left half is class 0 (dark) and right half class 1 (bright), and its 8 x 8 label map."""
    pixels = np.full((height, width, 3), 40, np.uint8)
    pixels[:, width // 2:] = 210
    label_map = torch.zeros(2, 2, 8, 8)
    label_map[0, 0] = 5.0
    label_map[1, 0, :, 4:] = 1  # top class: 0 on the left, 1 on the right
    label_map[1, 1, :, :4] = 1
    return Image.fromarray(pixels, "RGB"), label_map


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_token_labels_follow_a_flipped_crop(flip):
    transform = LabelMapTrainTransform(tv.Compose([
        RandomResizedCropAndInterpolation(32, scale=(0.05, 0.5), interpolation="bilinear"),
        tv.RandomHorizontalFlip(flip), MaybeToTensor()]))
    image, label_map = _halves()
    checked = {0: 0, 1: 0}
    for seed in range(16):
        _seed(seed)
        out, moved = transform(image, label_map)
        tokens = token_label_targets(moved[None], num_classes=2, label_size=4)[0, :, 2:].argmax(0).view(4, 4)
        cells = out[0].unfold(0, 8, 8).unfold(1, 8, 8) * 255  # (4, 4, 8, 8): the pixels of each token
        for row in range(4):
            for col in range(4):
                shown = 1 if cells[row, col].min() > 150 else 0 if cells[row, col].max() < 100 else None
                if shown is not None:  # cells on the border between the halves show both classes
                    assert int(tokens[row, col]) == shown, (seed, row, col)
                    checked[shown] += 1
    assert min(checked.values()) > 20  # crops on both sides were checked


# -- geometric RandAugment operations ---------------------------------------------------------------
def _classes_image(seed: int, side: int = 64) -> tuple[Image.Image, torch.Tensor]:
    """A side x side image of random classes 0..3 per pixel (grey 30 + 60 * class) and its per-pixel map."""
    classes = torch.randint(0, 4, (side, side), generator=torch.Generator().manual_seed(seed))
    grey = (30 + 60 * classes).to(torch.uint8).numpy()
    label_map = torch.stack([torch.ones(1, side, side), classes[None].float()])  # k = 1
    return Image.fromarray(np.stack([grey] * 3, axis=-1), "RGB"), label_map


def _decode(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class per pixel, fill mask) of a transformed ``_classes_image``."""
    pixels = (image * 255).round()
    fill = (pixels[0] == FILL[0]) & (pixels[1] == FILL[1])
    return ((pixels[0] - 30) / 60).round().long(), fill


@pytest.mark.parametrize("names", [["Rotate"], ["ShearX"], ["ShearY"], ["TranslateXRel"], ["TranslateYRel"],
                                   ["Rotate", "TranslateXRel"]])
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_geometric_operations_move_the_label_map_with_the_image(names, flip):
    """A 32 px crop of a 64 px image, so map cells and output pixels coincide: nearest resampling of both
    must agree on the class of every pixel, and the map must be empty exactly where the image shows the fill."""
    hparams = {"img_mean": FILL, "interpolation": Image.NEAREST}
    ops = [AugmentOp(name, prob=1.0, magnitude=9, hparams=hparams) for name in names]
    transform = LabelMapTrainTransform(tv.Compose([
        RandomResizedCropAndInterpolation(32, scale=(0.25, 0.25), ratio=(1.0, 1.0), interpolation="nearest"),
        tv.RandomHorizontalFlip(flip),
        RandAugment(ops, num_layers=len(names), choice_weights=[1 / len(ops)] * len(ops)),  # each op once
        MaybeToTensor()]))
    for seed in range(4):
        image, label_map = _classes_image(seed)
        _seed(seed)
        out, moved = transform(image, label_map)
        x, y, w, h = (moved[2, 0, 0, :4] * 64).round().long().tolist()
        assert w == h == 32
        shown, fill = _decode(out)
        window = moved[:2, 0, y:y + 32, x:x + 32]  # the map cells under the crop box
        labelled = window[0] > 0
        assert (labelled == ~fill).float().mean() > 0.98
        agree = (window[1].long() == shown)[labelled & ~fill].float().mean()
        # two operations: the image snaps to its pixel grid in between, the map follows the exact composition
        assert agree > (0.98 if len(names) == 1 else 0.93), (seed, float(agree))
        # the same window of the map as loaded (flipped as the image was) does not match: the op moved pixels
        unmoved = (label_map.flip(-1) if flip else label_map)[1, 0, y:y + 32, x:x + 32].long()
        assert (unmoved == shown)[~fill].float().mean() < 0.7


def test_photometric_operations_and_random_erasing_leave_the_label_map_alone():
    ops = [AugmentOp(name, prob=1.0, magnitude=9) for name in ("Invert", "SolarizeIncreasing", "Equalize")]
    crop = [RandomResizedCropAndInterpolation(32)]
    transform = LabelMapTrainTransform(tv.Compose(
        crop + [RandAugment(ops, num_layers=3), MaybeToTensor(), RandomErasing(1.0, device="cpu")]))
    plain = LabelMapTrainTransform(tv.Compose(crop + [MaybeToTensor()]))
    image, label_map = _classes_image(0)
    for seed in range(4):
        _seed(seed)
        out, moved = transform(image, label_map)
        _seed(seed)
        out_plain, moved_plain = plain(image, label_map)  # the same crop: it draws first
        assert not torch.equal(out, out_plain)
        assert torch.equal(moved, moved_plain) and torch.equal(moved[:2], label_map)


def test_the_transform_pickles_into_workers_with_its_notes_shared(imagenet_tree):
    transform = ImageNetDataModule(str(imagenet_tree), image_size=32).token_label_transform()
    copy = pickle.loads(pickle.dumps(transform))
    crop = next(step for kind, step in copy.steps if kind == "crop")
    rotate = next(op for kind, step in copy.steps if kind == "augment" for op in step.ops if op.name == "Rotate")
    assert crop.get_params.log is copy._log is rotate.aug_fn.log
    image, label_map = _classes_image(1)
    for seed in range(6):
        _seed(seed)
        first = transform(image, label_map)
        _seed(seed)
        again = copy(image, label_map)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_augmix_is_refused_with_token_labels(imagenet_tree, imagenet_token_labels):
    dm = _module(imagenet_tree, imagenet_token_labels, auto_augment="augmix-m5-w4-d2")
    with pytest.raises(TokenLabelError, match="augmix.*no single label map can follow"):
        dm.setup("fit")


# -- files: checked up front, and again when read --------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_missing_label_file_is_named_before_training(imagenet_tree, imagenet_token_labels, tmp_path):
    tree, labels = _copy(imagenet_tree, imagenet_token_labels, tmp_path)
    gone = labels / "n00000002" / "train_n00000002_3.pt"
    gone.unlink()
    with pytest.raises(TokenLabelFileError) as exc:
        _module(tree, labels).setup("fit")
    message = _one_line(exc)
    assert "1 of 24 training images have no token-label file" in message
    assert str(tree / "train" / "n00000002" / "train_n00000002_3.JPEG") in message and str(gone) in message


def test_a_missing_label_folder_is_named(imagenet_tree, tmp_path):
    with pytest.raises(TokenLabelFileError, match=rf"token_labels {tmp_path / 'nope'} is not a directory"):
        _module(imagenet_tree, tmp_path / "nope").setup("fit")


@pytest.mark.parametrize("content, expected", [
    (torch.zeros(3, 3, 8, 8), r"expected a float tensor of shape \(2, k, S, S\).*got a float32 tensor of shape "
                              r"\(3, 3, 8, 8\)"),
    (torch.zeros(2, 3, 4, 4), r"is a 4 x 4 map: the crop box and class are stored in its last row"),
    ({"scores": torch.zeros(2)}, r"got dict"),
    (torch.full((2, 3, 8, 8), 7.0), r"names classes 7\.\.7 but the training tree has 4"),
])
def test_a_malformed_first_file_is_refused_before_training(imagenet_tree, imagenet_token_labels, tmp_path,
                                                           content, expected):
    tree, labels = _copy(imagenet_tree, imagenet_token_labels, tmp_path)
    first = labels / "n00000000" / "train_n00000000_0.pt"
    torch.save(content, first)
    with pytest.raises(TokenLabelFileError, match=expected) as exc:
        _module(tree, labels).setup("fit")
    assert str(first) in _one_line(exc) and "train_n00000000_0.JPEG" in str(exc.value)


def test_label_files_broken_after_the_check_fail_when_read(imagenet_tree, imagenet_token_labels, tmp_path):
    tree, labels = _copy(imagenet_tree, imagenet_token_labels, tmp_path)
    dm = _module(tree, labels)
    dm.setup("fit")
    dataset = dm.train_set
    cases = {
        3: (lambda path: torch.save(torch.zeros(2, 3, 7, 7), path), r"expected a float tensor of shape "
                                                                     r"\(2, 3, 8, 8\).*got a float32 tensor"),
        9: (lambda path: path.write_bytes(b"not a tensor"), r"cannot read token-label file"),
        15: (lambda path: path.unlink(), r"no token-label file for image .*: expected "),
    }
    for index, (damage, expected) in cases.items():
        path = _label_of(labels, dataset, index)
        damage(path)
        with pytest.raises(TokenLabelFileError, match=expected) as exc:
            dataset[index]
        assert str(path) in _one_line(exc) and dataset.samples.path(index) in str(exc.value)


def test_a_skipped_image_brings_its_neighbours_label_map(imagenet_tree, imagenet_token_labels, tmp_path):
    tree, labels = _copy(imagenet_tree, imagenet_token_labels, tmp_path)
    bad = tree / "train" / "n00000001" / "train_n00000001_5.JPEG"  # the last of its class
    bad.write_bytes(b"garbage")
    dm = _module(tree, labels, on_bad_image="skip")
    dm.setup("fit")
    dataset = dm.train_set
    index = next(i for i in range(len(dataset)) if dataset.samples.path(i) == str(bad))
    _, label_map = dataset[index]
    neighbour = torch.load(_label_of(labels, dataset, index + 1))
    assert int(label_map[2, 0, 0, 5]) == dataset.targets[index + 1] == 2
    assert set(label_map[1].unique().tolist()) <= set(neighbour[1].unique().tolist())
    assert 2 in label_map[1]


def test_streaming_with_token_labels_is_refused():
    with pytest.raises(TokenLabelError, match="token_labels cannot be combined with streaming.*folder tree") as exc:
        ImageNetDataModule(streaming="s3://bucket/shards", token_labels="/data/label_top5_train_nfnet")
    _one_line(exc)


def test_glnet_fit_reports_a_missing_label_file_on_one_line(imagenet_tree, imagenet_token_labels, tmp_path,
                                                            capsys):
    from glnet_lightning.cli.main import main
    from testkit import CONFIGS, CPU_OVERRIDES, fit_args, tiny_flow

    tree, labels = _copy(imagenet_tree, imagenet_token_labels, tmp_path)
    (labels / "n00000003" / "train_n00000003_0.pt").unlink()
    rc = main(["fit", "--config", str(CONFIGS / "imagenet_glnet_stl.yaml"), f"--data.init_args.root={tree}",
               f"--data.init_args.token_labels={labels}", "--trainer.default_root_dir", str(tmp_path / "run"),
               *fit_args(CPU_OVERRIDES), f"--model.backbone={tiny_flow()}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("glnet: error:")]
    assert rc == 2 and len(errors) == 1, errors
    assert "1 of 24 training images have no token-label file" in errors[0]
    assert "train_n00000003_0.JPEG" in errors[0] and str(labels / "n00000003" / "train_n00000003_0.pt") in errors[0]
