"""Token labeling end to end: the recipe (``GLNetModule(token_labeling=...)``) on the ImageNet-layout tree
with generated label maps (the ``imagenet_token_labels`` fixture).

- ``configs/imagenet_glnet_9g_tklb.yaml`` fits and its checkpoint validates to the logged top-1 (the 4G
  config runs as the README's commands, tests/e2e/test_readme_commands.py::test_token_labeling_commands);
- a run stopped mid-epoch resumes to the uninterrupted run's weights, bit for bit: MixToken's boxes come
  from a generator that the checkpoint restores; validation scores the eval output
  (class logits + 0.5 x each class's best token logit);
- settings that cannot train with token labels stop in one line before any image is read.

All in process: the process boundary is not what these check (tests/e2e/test_exact_resume.py does that).
64 px images: a 2 x 2 final grid, so ``label_size`` 2 and room for a MixToken box.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import Callback, seed_everything

from glnet_lightning.cli.main import main as glnet
from glnet_lightning.data import ImageNetDataModule
from glnet_lightning.lit import GLNetModule, TokenLabeling
from glnet_lightning.models.backbone import resolve_backbone
from testkit import (CPU_OVERRIDES, REPO, fit_args, max_difference, one_error_line, scalars, tiny_named,
                     tiny_sets)
from testkit.data import make_trainer

IMAGE_SIZE = 64
LABEL_SIZE = IMAGE_SIZE // 32
#: The CPU overrides at 64 px with one batch each, and the label grid that size gives.
SHORT = [*fit_args({**CPU_OVERRIDES, "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1,
                    "data.image_size": IMAGE_SIZE}), "--model.token_labeling.label_size", str(LABEL_SIZE)]
#: The tiny sizes on a named token-labeling model (which keeps its own block types and heads).
TINY_OPTIONS = [f"--{text}" for text in tiny_sets() if not text.startswith("model.backbone.stage_mixers")]


def _in_process(capsys, *args: str) -> tuple[int, str]:
    """``glnet ARGS`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = glnet(list(args))
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_glnet_9g_tklb_config_fits_then_validates(imagenet_tree, imagenet_token_labels, tmp_path, capsys,
                                                  monkeypatch):
    """The config's own command (``--data.root``, ``--data.token_labels``) with the CPU overrides, on the
    network it names; ``glnet validate`` of its best checkpoint reproduces the logged top-1."""
    monkeypatch.chdir(REPO)
    config = "configs/imagenet_glnet_9g_tklb.yaml"
    run, check = tmp_path / "run", tmp_path / "validate"
    common = ["--config", config, "--data.root", str(imagenet_tree), *SHORT]
    code, err = _in_process(capsys, "fit", *common, "--data.token_labels", str(imagenet_token_labels),
                            "--checkpoint.save_last", "false", "--trainer.default_root_dir", str(run))
    assert code == 0, err[-4000:]
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True, mmap=True)
    hp = checkpoint["hyper_parameters"]
    named = yaml.safe_load((REPO / config).read_text())["model"]["backbone"]
    assert hp["backbone"] == resolve_backbone(named).describe() and hp["num_classes"] == 4
    assert hp["token_labeling"] == {"dense_weight": 0.5, "cls_weight": 1.0, "label_size": LABEL_SIZE,
                                    "ground_truth": False}
    assert hp["cooldown_epochs"] == 10 and hp["ema_decay"] is None and "ema_state_dict" not in checkpoint
    assert checkpoint["global_step"] == 1
    del checkpoint  # 0.7 GB with the optimizer state
    logged = [value for _, value in scalars(run, "val/acc1")]
    assert len(logged) == 1 and torch.isfinite(torch.tensor(scalars(run, "train/loss")[0][1]))

    code, err = _in_process(capsys, "validate", *common, "--trainer.default_root_dir", str(check),
                            "--ckpt_path", str(run / "checkpoints" / "best.ckpt"))
    assert code == 0, err[-4000:]
    assert [value for _, value in scalars(check, "val/acc1")] == pytest.approx(logged, abs=1e-6)


# ------------------------------------------------------------------------------------ exact resume
class SaveAtStep(Callback):
    """Writes a checkpoint after optimizer step ``step`` and goes on: the state a run stopped there leaves."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def _recipe(root: Path, token_labels: Path) -> tuple[GLNetModule, ImageNetDataModule]:
    """The tiny GLNet-4G token-labeling model with the recipe's settings (lr 2e-3 for this batch of 4, so the
    weights move), and the tree with its label maps
    (RandAugment, random erasing, flips, crops and repeated augmentation on; no loader workers: the
    augmentations draw from this process)."""
    module = GLNetModule(resolve_backbone("glnet_4g_tklb", **tiny_named()), num_classes=4, drop_path_rate=0.1,
                         base_batch_size=4, mixup=0.0, cutmix=0.0, label_smoothing=0.0, ema_decay=None, slot_map_every_n_epochs=0,
                         warmup_epochs=1, cooldown_epochs=1, token_labeling=TokenLabeling(label_size=LABEL_SIZE))
    data = ImageNetDataModule(root=str(root), token_labels=str(token_labels), image_size=IMAGE_SIZE, batch_size=4,
                              num_workers=0)
    return module, data


def _fit(folder: Path, root: Path, token_labels: Path, ckpt_path: Path | None = None, callbacks=()):
    seed_everything(0)  # as every `glnet fit` process starts
    module, data = _recipe(root, token_labels)
    trainer = make_trainer(folder, max_epochs=3, limit_train_batches=3, callbacks=list(callbacks))
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer, module, data


@pytest.mark.slow
def test_a_stopped_token_labeling_run_resumes_exactly_and_validates_the_eval_output(
        imagenet_tree, imagenet_token_labels, tmp_path):
    """9 steps (3 epochs of 3 batches: warm-up, cosine, cool-down), once without a stop, once resumed from
    the checkpoint of step 4 (mid-epoch): the same weights, optimizer state and MixToken generator state."""
    stopped_at = tmp_path / "step4.ckpt"
    reference, ref_module, data = _fit(tmp_path / "reference", imagenet_tree, imagenet_token_labels,
                                       callbacks=[SaveAtStep(4, stopped_at)])
    saved = torch.load(stopped_at, map_location="cpu", weights_only=True)
    (rank,) = saved["callbacks"]["ExactResume"]["ranks"]
    assert set(rank["generators"]) == {"mix_token"}  # saved per rank, like the global random state
    assert GLNetModule.load_from_checkpoint(stopped_at).token_labeling == TokenLabeling(label_size=LABEL_SIZE)
    resumed, module, _ = _fit(tmp_path / "resumed", imagenet_tree, imagenet_token_labels, ckpt_path=stopped_at)

    assert reference.global_step == resumed.global_step == 9
    assert max_difference(ref_module.model.state_dict(), module.model.state_dict()) == 0.0
    assert max_difference(reference.optimizers[0].state_dict(), resumed.optimizers[0].state_dict()) == 0.0
    # a generator seeded afresh would have drawn 5 steps' boxes, not 9: this one was restored
    assert torch.equal(ref_module.mix_token_generator.get_state(), module.mix_token_generator.get_state())
    assert not torch.equal(saved["callbacks"]["ExactResume"]["ranks"][0]["generators"]["mix_token"],
                           module.mix_token_generator.get_state())  # and it went on drawing

    # validation scores the eval output: class logits + 0.5 x each class's best token logit (the token head
    # scaled up first: after 9 small steps its logits are too close to 0 for the test to tell the two apart)
    model = module.model
    with torch.no_grad():
        model.aux_head.weight.mul_(100.0)
    (metrics,) = resumed.validate(module, datamodule=data, verbose=False)
    model.eval()
    outputs, labels = [], []
    with torch.no_grad():
        for images, targets in data.val_dataloader():
            cls_logits, aux_logits, _ = model.forward_train(images)
            outputs.append((cls_logits, aux_logits.max(1).values))
            labels.append(targets)
    cls_logits, best_tokens = (torch.cat(parts) for parts in zip(*outputs))
    labels = torch.cat(labels)
    expected = F.cross_entropy(cls_logits + 0.5 * best_tokens, labels)
    assert metrics["val/loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert abs(F.cross_entropy(cls_logits, labels).item() - expected.item()) > 1e-3  # the token term counts


# ------------------------------------------------------------------------------------ settings that cannot train
def _labels_option(imagenet_token_labels: Path) -> list[str]:
    return ["--data.token_labels", str(imagenet_token_labels)]


@pytest.mark.parametrize("config, options, message", [
    ("imagenet_glnet_4g_tklb.yaml", [],
     "model.token_labeling needs the label maps: give --data.token_labels DIR"),
    ("imagenet_glnet_4g_tklb.yaml", ["LABELS", "--model.token_labeling.label_size", "7"],
     "model.token_labeling.label_size=7 does not match the model's final grid at data.image_size=64 "
     "(64 / stride 32 = 2): set --model.token_labeling.label_size 2"),
    ("imagenet_glnet_4g_tklb.yaml", ["LABELS", "--model.mixup", "0.8"],
     "model.token_labeling trains without Mixup/CutMix and label smoothing"),
    ("imagenet_glnet_4g.yaml", ["LABELS"],
     "data.token_labels is set but the model does not train with token labels"),
    ("imagenet_glnet_4g.yaml", ["--model.token_labeling", "{label_size: 2}"],
     "model.token_labeling needs a model with an auxiliary token head (use_aux_head)"),
])
def test_settings_that_cannot_train_with_token_labels_stop_in_one_line(config, options, message, imagenet_tree,
                                                                      imagenet_token_labels, tmp_path, capsys):
    """Each mistake is named with its fix, before a training image is read (no checkpoint, no step)."""
    options = [word for option in options
               for word in (_labels_option(imagenet_token_labels) if option == "LABELS" else [option])]
    run = tmp_path / "run"
    code, err = _in_process(capsys, "fit", "--config", str(REPO / "configs" / config), "--data.root",
                            str(imagenet_tree), *SHORT[:-2], *TINY_OPTIONS, *options,
                            "--trainer.default_root_dir", str(run))
    assert code == 2
    assert message in one_error_line(err)
    assert not (run / "checkpoints").exists()
