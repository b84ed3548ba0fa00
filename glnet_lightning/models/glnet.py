"""GLNet: a four-stage backbone of GLMix blocks (NeurIPS 2024), its description, and timm registration.

Usage::

    import glnet_lightning, timm
    model = timm.create_model("glnet_stl", num_classes=10, num_slots=49, kernel_size=7)
    model = timm.create_model("glnet_4g", pretrained=True, pretrained_cfg_overlay=dict(file="glnet_4g.pth"))
    model = glnet_stl(num_slots=49).build(num_classes=10)   # the same, from the description
    cls_logits, token_logits, box = timm.create_model("glnet_4g_tklb").train().forward_train(images)  # token labeling

``GLNetArgs`` is the description of a GLNet (every value that decides the network), ``NAMED_MODELS``
the one table of the published models, each made into a description class and a timm entry point of
the same name. ``GLNet`` itself takes strategy specs from ``strategies.py``; its ``num_slots``,
``kernel_size``, ``window_size``, ``slot_init`` and ``clustering`` are shortcuts that change one setting
of the configured strategies, per stage when given a list of 4; for a branch that is ``none`` they are
checked, then ignored.
"""
# No ``from __future__ import annotations`` here: fx copies ``GLNet.forward``'s annotation into the traced
# graph's code, and TorchScript cannot resolve a postponed (string) one (timm's fx-then-script test).
import dataclasses
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model, resolve_pretrained_cfg
from timm.models._features import feature_take_indices
from torch import nn

from .backbone import Backbone, register_backbone
from .blocks import BLOCK_TYPES, GLMixBlock, MHSANCHWBlock, TransformerBlock
from .layers import STEMS, TRANSITIONS, check_head_dim, is_exporting, resolve_act_layer, resolve_norm_layer
from .official import official_kwargs_to_ours
from .strategies import DWConvLocal, GLMixConfig, SlotAttentionGlobal, WindowMHSALocal, resolve_strategy
from .weights import Weights, WeightsError, classifier_note, mismatch, read_weights, weights_from, with_own_classifiers

__all__ = ["GLNet", "GLNetArgs", "GLNetStage", "NAMED_MODELS", "checkpoint_filter_fn", "glnet_from_official_kwargs",
           "mix_token_box"]

logger = logging.getLogger(__name__)


def _per_stage(value: Any, num_stages: int, name: str) -> list:
    """Broadcast a setting to all stages, or take a list with one entry per stage."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_stages:
            raise ValueError(f"{name} has {len(value)} entries but the model has {num_stages} stages; give one value or one per stage")
        return list(value)
    return [value] * num_stages


def _block_kinds(pattern: str, depth: int, stage: int) -> list[str]:
    """'glmix.mha_nchw' alternates the dotted kinds across the stage's blocks, starting with the first."""
    kinds = pattern.split(".")
    bad = [k for k in kinds if k not in BLOCK_TYPES]
    if bad:
        raise ValueError(
            f"stage_mixers[{stage}]={pattern!r}: unknown block type(s) {bad}; use {sorted(BLOCK_TYPES)} "
            f"or dotted alternations such as 'glmix.mha_nchw'"
        )
    return [kinds[i % len(kinds)] for i in range(depth)]


_SHORTCUTS = {
    # shortcut -> (the strategy it edits, the strategy class it is for, the field); it applies to
    # any strategy with that field, and is checked, then ignored, when that branch is 'none'
    "kernel_size": ("local", DWConvLocal, "kernel_size"),
    "window_size": ("local", WindowMHSALocal, "window_size"),
    "num_slots": ("global_branch", SlotAttentionGlobal, "num_slots"),
    "slot_init": ("global_branch", SlotAttentionGlobal, "slot_init"),
    "clustering": ("global_branch", SlotAttentionGlobal, "clustering"),
}


def _mixer_config(stage: int, local: Any, global_branch: Any, fusion: Any,
                  shortcuts: dict[str, Any]) -> tuple[GLMixConfig, list[str]]:
    """The stage's GLMixConfig with the shortcuts applied, and the shortcuts ignored because the
    branch they set up is 'none' (a sweep variant that drops a branch keeps the base's settings)."""
    config = GLMixConfig.from_spec(local=local, global_branch=global_branch, fusion=fusion)
    edits: dict[str, dict[str, Any]] = {}  # strategy attribute -> its new settings, applied together
    absent: dict[type, dict[str, Any]] = {}  # strategy class -> settings, per absent branch
    ignored = []
    for key, value in shortcuts.items():
        if value is None:
            continue
        attr, cls, field = _SHORTCUTS[key]
        strategy = getattr(config, attr)
        if strategy is None:
            absent.setdefault(cls, {})[field] = value
            ignored.append(key)
            continue
        if field not in {f.name for f in dataclasses.fields(strategy)}:
            current = strategy.spec().get("name") or strategy.spec()["class_path"]
            raise ValueError(
                f"stage {stage}: {key}={value!r} applies to {attr}={cls.name!r}, but {attr} is {current!r}; "
                f"drop {key} or choose {attr}={cls.name!r}"
            )
        edits.setdefault(attr, {})[field] = value
    for cls, settings in absent.items():
        cls.from_spec(**settings)  # bad values fail even for an absent branch, then are ignored
    config = dataclasses.replace(config, **{attr: getattr(config, attr).replace(**settings)
                                            for attr, settings in edits.items()})
    return config, ignored


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """GLNet runs channels_last end to end: pixels become contiguous (B, L, C) token views for the
    slot attention and the 1x1 convs become plain GEMMs, with no layout copies between blocks.

    Not under torch.export: with a dynamic height/width the stride guards of a channels_last map
    after the 4x4 patch stem are beyond its shape solver (STL would export for multiples of 32
    only); the layout changes no value, and ONNX has none.
    """
    if is_exporting():
        return x
    return x.contiguous(memory_format=torch.channels_last)


def _log_ignored(ignored: dict[str, list[int]], why: str) -> None:
    """One INFO line: the settings ignored, grouped by the stages they were ignored in."""
    if not ignored:
        return
    groups: dict[tuple, list[str]] = {}
    for key, stages_of_key in ignored.items():
        groups.setdefault(tuple(stages_of_key), []).append(key)
    notes = [f"{', '.join(keys)} (stage{'s' * (len(at) > 1)} {', '.join(map(str, at))})" for at, keys in groups.items()]
    logger.info("GLNet: ignoring %s: %s", "; ".join(notes), why)


class GLNetStage(nn.Module):
    """Downsampling (identity for the first stage, the stem runs before) followed by the blocks."""

    def __init__(self, downsample: nn.Module | None, blocks: Sequence[nn.Module]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class GLNet(nn.Module):
    """Four stages of GLMix / attention blocks with downsampling between, then BN -> avg pool -> Linear.

    Args:
        depths: number of blocks in each stage.
        dims: channel width of each stage; each must be a multiple of ``head_dim`` where attention runs.
        stage_mixers: block type per stage: ``glmix``, ``mha``, ``mha_nchw`` or a dotted alternation.
        mlp_ratios: MLP hidden width over block width, for all stages or one per stage.
        head_dim: channels per attention head (slot MHSA, window MHSA, full MHSA blocks).
        stem: input stem, ``patch`` (4x4 patches) or ``overlap`` (two strided 3x3 convs).
        transition: downsampling between stages, ``norm_conv`` or ``conv_norm``.
        cpe_kernel: kernel of the conditional position encoding in front of each block; 0 for none.
        mlp_dwconv: add a depthwise 3x3 conv inside the conv MLP (the 4G family).
        layer_scale: initial layer-scale value of the residual branches; None for no layer scale.
        norm_layer: the blocks' norm on NCHW maps: a timm name (``layernorm2d``, ``rmsnorm2d``, ...) or class.
        norm_layer_cl: the blocks' norm on tokens (attention blocks): a timm name (``layernorm``, ...) or class.
        act_layer: the MLPs' activation: a timm name (``gelu``, ``relu``, ...) or class; the overlap stem keeps GELU.
        local: local-branch strategy spec (name, dict, ``class_path`` dict, object or ``none``).
        global_branch: global-branch strategy spec, ``slots`` or ``none``, same forms as ``local``.
        fusion: how the branches combine: ``parallel``, ``global_local``, ``local_global`` or a class.
        kernel_size: shortcut for the depthwise kernel of ``local='dwconv'``; per stage if a list.
        window_size: shortcut for the window side of ``local='window_mhsa'``; per stage if a list.
        num_slots: shortcut for the slot count of ``global_branch='slots'``; per stage if a list.
        slot_init: shortcut for the slot init strategy (``pool`` / ``param``) of the slots branch.
        clustering: shortcut for the clustering strategy (``soft`` / ``kmeans``) of the slots branch.
        num_classes: classifier outputs; 0 for no head (features only).
        in_chans: input image channels.
        global_pool: ``avg`` to average the final map before the head, ``''`` to keep it.
        drop_rate: dropout before the classifier (and the token head).
        drop_path_rate: stochastic depth rate, rising linearly to this value over all blocks.
        use_aux_head: token labeling (LV-ViT; timm's volo.py naming): a second Linear head ``aux_head`` scores
            every final-stage pixel; the output becomes ``cls + 0.5 * max over pixels of aux``.
        use_mix_token: ``forward_train`` of a training model mixes a random box of the stem output between
            the images of the batch (MixToken) and swaps the box's token logits back; needs ``use_aux_head``.
        pooling_scale: the stride ratio of the stem output to the final-stage grid on which the MixToken box
            is drawn; None for the network's own (8 for four stages), any other value is refused.

    A shortcut set for a branch that is ``none`` is checked, then ignored with an INFO log line, so
    a variant that drops a branch need not unset its settings; so are ``cpe_kernel`` and ``mlp_dwconv``
    in 'mha' stages (the plain transformer block has neither, as in the reference).
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 6, 2),
        dims: Sequence[int] = (96, 192, 384, 768),
        stage_mixers: Sequence[str] = ("glmix", "glmix", "glmix", "mha"),
        mlp_ratios: float | Sequence[float] = 4.0,
        head_dim: int = 32,
        stem: str = "patch",
        transition: str = "norm_conv",
        cpe_kernel: int = 0,
        mlp_dwconv: bool = False,
        layer_scale: float | None = None,
        norm_layer: Any = "layernorm2d",
        norm_layer_cl: Any = "layernorm",
        act_layer: Any = "gelu",
        local: Any = "dwconv",
        global_branch: Any = "slots",
        fusion: Any = "parallel",
        kernel_size: int | Sequence[int] | None = None,
        window_size: int | Sequence[int] | None = None,
        num_slots: int | Sequence[int] | None = None,
        slot_init: Any = None,
        clustering: Any = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_aux_head: bool = False,
        use_mix_token: bool = False,
        pooling_scale: Optional[int] = None,
    ):
        super().__init__()
        for name, value in (("depths", depths), ("dims", dims)):  # a string would pass len() below
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ValueError(f"{name}={value!r} is invalid: give a list of integers, one per stage")
        if isinstance(stage_mixers, str):
            raise ValueError(f"stage_mixers={stage_mixers!r} is invalid: give a list with one block type per stage")
        n = len(depths)
        if not (len(dims) == len(stage_mixers) == n) or n < 1:
            raise ValueError(f"depths ({len(depths)}), dims ({len(dims)}) and stage_mixers ({len(stage_mixers)}) need one entry per stage")
        if any(int(d) < 1 for d in depths):
            raise ValueError(f"depths={list(depths)}: every stage needs at least one block")
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; choose one of {sorted(STEMS)}")
        if transition not in TRANSITIONS:
            raise ValueError(f"unknown transition {transition!r}; choose one of {sorted(TRANSITIONS)}")
        if cpe_kernel and (cpe_kernel < 1 or cpe_kernel % 2 == 0):
            raise ValueError(f"cpe_kernel={cpe_kernel} is invalid: use 0 (no CPE) or an odd kernel size such as 3")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool={global_pool!r} is not supported; use 'avg' or '' (no pooling)")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
        if use_mix_token and not use_aux_head:
            raise ValueError("use_mix_token=True needs use_aux_head=True: MixToken swaps the token head's logits back")
        stem_to_final = 2 ** (n - 1)  # each transition halves the map
        if pooling_scale is not None and pooling_scale != stem_to_final:
            raise ValueError(f"pooling_scale={pooling_scale} does not fit the network: its stem output is "
                             f"{stem_to_final}x its final-stage grid; leave pooling_scale unset")

        norm_2d = resolve_norm_layer(norm_layer, "norm_layer")
        norm_cl = resolve_norm_layer(norm_layer_cl, "norm_layer_cl")
        act = resolve_act_layer(act_layer)

        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        mlp_ratios = _per_stage(mlp_ratios, n, "mlp_ratios")
        per_stage = {name: _per_stage(value, n, name) for name, value in dict(
            local=local, global_branch=global_branch, fusion=fusion, kernel_size=kernel_size,
            window_size=window_size, num_slots=num_slots, slot_init=slot_init, clustering=clustering).items()}

        self.stem = STEMS[stem](in_chans, dims[0])
        drop_rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # plain numbers, also under torch.device("meta")
        stages, self.feature_info, reduction, cursor = [], [], 4, 0
        self.mixer_configs = []  # GLMixConfig or None per stage (no inline annotation: torch.jit.script warns on it)
        ignored: dict[str, list[int]] = {}  # shortcut -> stages where its branch is 'none'
        unused_by_mha: dict[str, list[int]] = {}  # cpe_kernel / mlp_dwconv -> stages of 'mha' blocks
        for i in range(n):
            kinds = _block_kinds(stage_mixers[i], depths[i], i)
            config = None
            if "glmix" in kinds:
                config, ignored_here = _mixer_config(
                    i, *(per_stage[k][i] for k in ("local", "global_branch", "fusion")),
                    {k: per_stage[k][i] for k in _SHORTCUTS})
                for key in ignored_here:
                    ignored.setdefault(key, []).append(i)
            if "mha" in kinds or "mha_nchw" in kinds or config is not None:
                check_head_dim(dims[i], head_dim, f"stage {i} (dims[{i}])")
            self.mixer_configs.append(config)
            if "mha" in kinds:
                for key in [k for k, v in (("cpe_kernel", cpe_kernel), ("mlp_dwconv", mlp_dwconv)) if v]:
                    unused_by_mha.setdefault(key, []).append(i)
            blocks = []
            for j, kind in enumerate(kinds):
                common = dict(head_dim=head_dim, mlp_ratio=mlp_ratios[i], layer_scale_init=layer_scale,
                              drop_path=drop_rates[cursor + j], act_layer=act)
                if kind == "glmix":
                    block = GLMixBlock(dims[i], config, cpe_kernel=cpe_kernel, mlp_dwconv=mlp_dwconv,
                                       norm_layer=norm_2d, **common)
                elif kind == "mha_nchw":
                    block = MHSANCHWBlock(dims[i], cpe_kernel=cpe_kernel, mlp_dwconv=mlp_dwconv, norm_layer=norm_2d,
                                          norm_layer_cl=norm_cl, **common)
                else:
                    block = TransformerBlock(dims[i], norm_layer=norm_cl, **common)
                blocks.append(block)
            cursor += depths[i]
            downsample = TRANSITIONS[transition](dims[i - 1], dims[i]) if i > 0 else None
            reduction *= 2 if i > 0 else 1
            stages.append(GLNetStage(downsample, blocks))
            self.feature_info.append(dict(num_chs=dims[i], reduction=reduction, module=f"stages.{i}"))
        _log_ignored(ignored, "the branch they set up is 'none'")
        _log_ignored(unused_by_mha, "'mha' blocks have no CPE and no hidden dwconv")
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.use_aux_head = use_aux_head
        self.use_mix_token = use_mix_token
        self.pooling_scale = stem_to_final
        self.aux_head = nn.Linear(dims[-1], num_classes) if use_aux_head and num_classes > 0 else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ timm model interface
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters that must not be decayed besides norms/biases: temperatures, learned slots, position biases."""
        return {n for n, _ in self.named_parameters() if n.endswith((".tau", ".slots", ".rel_pos_bias"))}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh class head, and a fresh token head when the model has one (none for 0 classes)."""
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool={global_pool!r} is not supported; use 'avg' or ''")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.aux_head = nn.Linear(self.num_features, num_classes) if self.use_aux_head and num_classes > 0 else None

    def glmix_blocks(self) -> list[GLMixBlock]:
        """All GLMix blocks in forward order (block k of the paper's figures is index k-1)."""
        return [m for m in self.modules() if isinstance(m, GLMixBlock)]

    # ------------------------------------------------------------------ feature extraction
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs for timm's feature API; intermediate ``i`` is the output of ``stages[i]``.

        ``indices``: last n stages if an int, those stages if a list (negative from the end), all if None.
        ``norm`` applies the final BatchNorm to the last stage's map, the only one it is sized for.
        NCHW maps keep channels_last strides, so ``output_fmt='NHWC'`` is a free permute.
        """
        assert output_fmt in ("NCHW", "NHWC"), "output_fmt must be NCHW or NHWC"
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last_idx = len(self.stages) - 1

        x = self.stem(_channels_last(x))
        if torch.jit.is_scripting() or not stop_early:  # TorchScript cannot slice a Sequential
            stages = self.stages
        else:
            stages = self.stages[:max_index + 1]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages):
            x = stage(x)
            if feat_idx in take_indices:
                x_inter = self.norm(x) if norm and feat_idx == last_idx else x
                if output_fmt == "NHWC":
                    x_inter = x_inter.permute(0, 2, 3, 1).contiguous()
                intermediates.append(x_inter)

        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: Union[int, List[int]] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last wanted intermediate (and norm / head); returns the kept indices.

        As in timm's families, cutting stages also drops the final norm and the head: both are sized
        for the last stage.
        """
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(_channels_last(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The class logits; with the token head, plus half of each class's highest token logit (LV-ViT's
        evaluation output)."""
        pooled = self.head_drop(x.mean(dim=(2, 3)) if self.global_pool == "avg" else x)
        if pre_logits:
            return pooled
        logits = self.head(pooled)
        if self.aux_head is not None and self.global_pool == "avg":
            logits = logits + 0.5 * self.aux_head(self.head_drop(_tokens(x))).amax(dim=1)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_train(
        self, x: torch.Tensor, bbox: Optional[Tuple[int, int, int, int]] = None,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int, int, int]]:
        """Token labeling's training forward: ``(class logits (B, classes), token logits (B, N, classes), box)``.

        ``bbox`` = (bbx1, bby1, bbx2, bby2) on the final-stage grid, the first pair along the height (dim 2),
        the second along the width (dim 3), as the reference has it. Inside the box, scaled by
        ``pooling_scale`` onto the stem output, every image takes the values of the image at the mirrored
        batch index (``flip(0)``); the token logits inside the box are swapped back, so each token is scored
        against its own image's label map. A given ``bbox`` is applied as is; otherwise a training model with
        ``use_mix_token`` draws one from ``generator`` (None: torch's global RNG), and any other gets the
        empty box (0, 0, 0, 0).
        """
        if self.aux_head is None or self.global_pool != "avg":
            raise ValueError("forward_train needs the token head: build the model with use_aux_head=True, "
                             "num_classes > 0 and global_pool='avg'")
        x = self.stem(_channels_last(x))
        if bbox is None:
            grid = (x.shape[2] // self.pooling_scale, x.shape[3] // self.pooling_scale)
            bbox = mix_token_box(grid, generator) if self.use_mix_token and self.training else (0, 0, 0, 0)
        bbox = tuple(int(v) for v in bbox)
        x = self.norm(self.stages(_swap_box_with_flipped_batch(x, bbox, self.pooling_scale)))
        cls_logits = self.head(self.head_drop(x.mean(dim=(2, 3))))
        aux = self.aux_head(self.head_drop(_tokens(x)))  # (B, N, classes), N = H * W of the final grid
        aux_map = aux.unflatten(1, x.shape[2:]).permute(0, 3, 1, 2)  # (B, classes, H, W) view
        aux = _swap_box_with_flipped_batch(aux_map, bbox, 1).flatten(2).transpose(1, 2)
        return cls_logits, aux, bbox


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H * W, C), pixels in row-major order (a view of a channels_last map)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def mix_token_box(grid: Tuple[int, int], generator: Optional[torch.Generator] = None) -> Tuple[int, int, int, int]:
    """A MixToken box (bbx1, bby1, bbx2, bby2) on a ``grid`` of (height, width) cells: lam ~ Beta(1, 1), sides
    ``int(side * sqrt(1 - lam))`` around a uniform centre, clipped to the grid; drawn from ``generator``
    (None: torch's global RNG), so a run that restores the generator draws the same boxes again."""
    if min(grid) < 1:  # an input too small for one final-stage cell
        return 0, 0, 0, 0
    lam = torch.rand((), generator=generator).item()  # Beta(1, 1) is the uniform distribution
    ratio = math.sqrt(1.0 - lam)
    box = []
    for side in grid:
        cut = int(side * ratio)
        centre = int(torch.randint(0, side, (), generator=generator))
        box.append((min(max(centre - cut // 2, 0), side), min(max(centre - cut // 2 + cut, 0), side)))
    (bbx1, bbx2), (bby1, bby2) = box
    return bbx1, bby1, bbx2, bby2


def _swap_box_with_flipped_batch(x: torch.Tensor, bbox: Tuple[int, int, int, int], scale: int) -> torch.Tensor:
    """``x`` (B, C, H, W) with the box (scaled by ``scale``) taken from the image at the mirrored batch index."""
    top, left, bottom, right = (v * scale for v in (bbox[0], bbox[1], bbox[2], bbox[3]))
    if bottom <= top or right <= left:
        return x
    mixed = x.clone()
    mixed[:, :, top:bottom, left:right] = x.flip(0)[:, :, top:bottom, left:right]
    return mixed


def glnet_from_official_kwargs(use_aux_head: bool = False, **official_kwargs: Any) -> GLNet:
    """Build the GLNet that the reference constructor builds for these keyword arguments; ``use_aux_head``
    builds its token-labeling model (``GLNet_tklb``: the token head, MixToken in training)."""
    return GLNet(**official_kwargs_to_ours(**official_kwargs), use_aux_head=use_aux_head,
                 use_mix_token=use_aux_head)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: GLNet, weights: Weights | None = None) -> dict[str, torch.Tensor]:
    """timm's pretrained filter: the weights under our names (models/weights.py chooses and converts),
    refused with one line naming what differs before timm loads anything.

    ``weights``: the file ``_create_glnet`` read (its name and kind for the messages); without it the
    state dict timm loaded (a URL / hub download, or ``pretrained_cfg_overlay=dict(state_dict=...)``).
    """
    if weights is None:
        weights = weights_from(state_dict)
        state_dict = weights.state_dict
    problem = mismatch(state_dict, model, hyper_parameters=weights.hyper_parameters)
    if problem is not None:
        raise WeightsError(f"pretrained weights {weights.source} do not fit {type(model).__name__}: {problem}")
    logger.info(f"weights: {weights.describe()}{classifier_note(weights, model)}")
    return with_own_classifiers(state_dict, model)


#: Where the published weights are: the origin repository links them; there is no download source here.
PUBLISHED_WEIGHTS = "https://github.com/rayleizhu/GLMix"
_WEIGHTS_FILES = f"a published GLNet checkpoint (linked from {PUBLISHED_WEIGHTS}) or a glnet fit checkpoint"


def _create_glnet(variant: str, pretrained: bool = False, **kwargs) -> GLNet:
    filter_fn = checkpoint_filter_fn
    if kwargs.get("use_aux_head"):  # the cfg names both heads, for timm's loader and models/weights.py
        kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}),
                                            "classifier": _TOKEN_LABELING_CLASSIFIERS}
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")) \
        if pretrained else None  # where the weights come from, as timm will resolve it
    if cfg is not None and cfg.state_dict is None and cfg.source not in ("hf-hub", "local-dir"):
        if not (cfg.file or cfg.url or cfg.hf_hub_id):
            raise WeightsError(f"{variant} has no weights to download: pass "
                               f"pretrained_cfg_overlay=dict(file=PATH) naming {_WEIGHTS_FILES}")
        if cfg.file:
            # Read here, not by timm: timm takes model_ema before model and cannot read a fit .ckpt; weights.py
            # takes what the file's authors evaluate. The cfg's num_classes describes the file (the model's
            # default, as for timm's own weights), so timm keeps the file's classifier exactly when the model
            # has as many classes.
            weights = read_weights(cfg.file, "auto", what="pretrained weights", missing=(
                f": give pretrained_cfg_overlay=dict(file=...) the path of {_WEIGHTS_FILES}"))
            head = weights.state_dict.get("head.weight")
            kwargs["pretrained_cfg_overlay"] = {**(kwargs.get("pretrained_cfg_overlay") or {}),
                                                "state_dict": weights.state_dict,
                                                **({"num_classes": head.shape[0]} if head is not None else {})}
            filter_fn = functools.partial(checkpoint_filter_fn, weights=weights)
    model = build_model_with_cfg(
        GLNet, variant, pretrained,
        pretrained_filter_fn=filter_fn,
        # 'getter' runs forward_intermediates on a model pruned to the wanted stages; 'fx', 'list'
        # and 'hook' still work through feature_cls=... (flatten_sequential is for the latter two).
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter", flatten_sequential=True),
        **kwargs,
    )
    for module in model.modules():  # the cfg names the file: no copy of its weights (a features_only wrapper has two)
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)
    return model


def _cfg(**kwargs) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0", "classifier": "head",
        "paper_ids": "arXiv:2411.14429", "paper_name": "Revisiting the Integration of Convolution and Attention for Vision Backbone",
        "origin_url": PUBLISHED_WEIGHTS,
        **kwargs,
    }


_TOKEN_LABELING_CLASSIFIERS = ("head", "aux_head")  # both are replaced for another class count, as timm's volo

# No download source, so no pretrained tag: the weights come from a file the user points at (see _create_glnet).
default_cfgs = generate_default_cfgs({
    "glnet_stl": _cfg(),
    "glnet_stl_paramslot": _cfg(),
    "glnet_4g": _cfg(),
    "glnet_9g": _cfg(),
    "glnet_16g": _cfg(),
    "glnet_4g_tklb": _cfg(classifier=_TOKEN_LABELING_CLASSIFIERS),
    "glnet_9g_tklb": _cfg(classifier=_TOKEN_LABELING_CLASSIFIERS),
})


# ------------------------------------------------------------------ the description of a GLNet
Spec = Union[str, Dict[str, Any], None]
StageSpec = Union[str, Dict[str, Any], List[Union[str, Dict[str, Any], None]], None]

# strategy field of the description -> (strategy kind, None allowed, the shortcut fields that are
# the description's own fields and so are left out of the strategy's recorded spec)
_STRATEGY_FIELDS = {
    "local": ("local", True, ("kernel_size", "window_size")),
    "global_branch": ("global", True, ("num_slots", "slot_init", "clustering")),
    "fusion": ("fusion", False, ()),
    "slot_init": ("slot_init", False, ()),
    "clustering": ("clustering", False, ()),
}


def _stage_values(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _recorded_spec(kind: str, spec: Any, allow_none: bool, own: Sequence[str]) -> Any:
    """A strategy spec with every setting spelled out (so a run records it), less the settings that are
    the description's own fields."""
    strategy = resolve_strategy(kind, spec, allow_none=allow_none)
    if strategy is None:
        return "none"
    full = strategy.spec()
    if "class_path" in full:
        return {"class_path": full["class_path"], "init_args": {k: v for k, v in full["init_args"].items() if k not in own}}
    named = {k: v for k, v in full.items() if k not in own}
    return named["name"] if set(named) == {"name"} else named


def _explicit(spec: Any) -> dict[str, Any]:
    """The settings a strategy dict spells out itself."""
    if not isinstance(spec, dict):
        return {}
    return dict(spec.get("init_args") or {}) if "class_path" in spec else {k: v for k, v in spec.items() if k != "name"}


@dataclass
class GLNetArgs(Backbone):
    """Everything that decides a GLNet: the description a run records and rebuilds its network from.

    The named models (``glnet_stl`` ...) are this class with other defaults (``NAMED_MODELS``). The
    settings of the built-in strategies are fields of their own (``kernel_size`` for ``local=dwconv``,
    ``num_slots`` / ``slot_init`` / ``clustering`` for ``global_branch=slots``, ...) and are unused by a
    strategy that has no such setting; per stage when given a list of 4.

    Args:
        depths: number of blocks in each stage.
        dims: channel width of each stage (a multiple of head_dim where attention runs).
        stage_mixers: block type per stage: glmix, mha, mha_nchw, or a dotted alternation such as glmix.mha_nchw.
        mlp_ratios: MLP hidden width over block width, for all stages or one per stage.
        head_dim: channels per attention head.
        stem: input stem: patch (4x4 patches) or overlap (two strided 3x3 convs).
        transition: downsampling between stages: norm_conv or conv_norm.
        cpe_kernel: kernel of the conditional position encoding before each block; 0 for none.
        mlp_dwconv: a depthwise 3x3 conv inside the MLP (the 4G family).
        layer_scale: initial layer-scale value of the residual branches; null for none.
        norm_layer: the blocks' norm on NCHW maps, a timm norm name: layernorm2d, rmsnorm2d, ...
        norm_layer_cl: the blocks' norm on tokens (attention blocks), a timm norm name: layernorm, rmsnorm, ...
        act_layer: the MLPs' activation, a timm activation name: gelu, relu, silu, ...
        local: local branch: dwconv, window_mhsa, none, or a strategy mapping (name or class_path).
        global_branch: global branch: slots, none, or a strategy mapping.
        fusion: how the branches combine: parallel, global_local, local_global, or a strategy mapping.
        kernel_size: depthwise kernel of the dwconv local branch.
        window_size: window side of the window_mhsa local branch.
        num_slots: slot count of the slots global branch.
        slot_init: slot initialisation of the slots branch: pool, param, or a strategy mapping.
        clustering: clustering of the slots branch: soft, kmeans, or a strategy mapping.
        in_chans: input image channels.
        drop_rate: dropout before the classifier.
        use_aux_head: token labeling's second head, scoring every final-stage pixel (the _tklb models).
        use_mix_token: MixToken in the training forward (forward_train); needs use_aux_head.
        pooling_scale: stem-output-to-final-grid stride ratio of the MixToken box; null for the network's own.
    """

    depths: List[int] = field(default_factory=lambda: [2, 2, 6, 2])
    dims: List[int] = field(default_factory=lambda: [96, 192, 384, 768])
    stage_mixers: List[str] = field(default_factory=lambda: ["glmix", "glmix", "glmix", "mha"])
    mlp_ratios: Union[float, List[float]] = 4.0
    head_dim: int = 32
    stem: Literal["patch", "overlap"] = "patch"
    transition: Literal["norm_conv", "conv_norm"] = "norm_conv"
    cpe_kernel: int = 0
    mlp_dwconv: bool = False
    layer_scale: Optional[float] = None
    norm_layer: str = "layernorm2d"
    norm_layer_cl: str = "layernorm"
    act_layer: str = "gelu"
    local: StageSpec = "dwconv"
    global_branch: StageSpec = "slots"
    fusion: StageSpec = "parallel"
    kernel_size: Union[int, List[int]] = 5
    window_size: Union[int, List[int]] = 7
    num_slots: Union[int, List[int]] = 64
    slot_init: StageSpec = "pool"
    clustering: StageSpec = "soft"
    in_chans: int = 3
    drop_rate: float = 0.0
    use_aux_head: bool = False
    use_mix_token: bool = False
    pooling_scale: Optional[int] = None

    def __post_init__(self) -> None:
        # Spell every strategy out (a run records kmeans' iterations, not just 'kmeans'), and refuse a
        # strategy mapping that sets one of the description's own fields to another value.
        n = len(self.depths) if isinstance(self.depths, (list, tuple)) else 1
        resolve_norm_layer(self.norm_layer, "norm_layer")  # a wrong name fails where it is given
        resolve_norm_layer(self.norm_layer_cl, "norm_layer_cl")
        resolve_act_layer(self.act_layer)
        for name, (kind, allow_none, own) in _STRATEGY_FIELDS.items():
            value = getattr(self, name)
            stages = _stage_values(value, n)
            for i, spec in enumerate(stages):
                for key, given in _explicit(spec).items():
                    if key in own and _stage_values(getattr(self, key), n)[i] not in (given, None):
                        raise ValueError(
                            f"{name} sets {key}={given!r} but {key} is {getattr(self, key)!r}: set {key} itself "
                            f"(it is a setting of the description)")
            recorded = [_recorded_spec(kind, spec, allow_none, own) for spec in stages]
            setattr(self, name, recorded if isinstance(value, (list, tuple)) else recorded[0])
        for name in ("depths", "dims", "stage_mixers"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))

    @property
    def name(self) -> str:
        return type(self).__name__ if type(self).__name__ in NAMED_MODELS else "glnet"

    def glnet_kwargs(self) -> dict[str, Any]:
        """``GLNet`` constructor arguments: a strategy setting goes only to the stages whose strategy has it."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        n = len(self.depths)
        for key, (attr, _cls, fld) in _SHORTCUTS.items():
            kind, allow_none, _own = _STRATEGY_FIELDS[attr]
            strategies = [resolve_strategy(kind, s, allow_none=allow_none)
                          for s in _stage_values(getattr(self, attr), n)]
            values = _stage_values(getattr(self, key), n)
            kwargs[key] = [v if s is not None and fld in {f.name for f in dataclasses.fields(s)} else None
                           for v, s in zip(values, strategies)]
        return kwargs

    def build(self, num_classes: int = 1000, drop_path_rate: float = 0.0, **timm_kwargs: Any) -> GLNet:
        variant = type(self).__name__ if type(self).__name__ in NAMED_MODELS else "glnet_stl"
        pretrained = timm_kwargs.pop("pretrained", False)
        return _create_glnet(variant, pretrained, num_classes=num_classes, drop_path_rate=drop_path_rate,
                             **self.glnet_kwargs(), **timm_kwargs)


#: The published named models: the one table of their settings (the rest are GLNetArgs' defaults).
NAMED_MODELS: dict[str, dict[str, Any]] = {
    "glnet_stl": dict(
        __doc__="GLNet-STL: Swin-T layout, GLMix in stages 1-3 (30.3 M params, 4.4 GMACs)."),
    "glnet_stl_paramslot": dict(
        slot_init="param", __doc__="GLNet-STL with learned (static) slot initialisation (30.5 M params)."),
    "glnet_4g": dict(
        depths=[4, 4, 18, 4], dims=[64, 128, 256, 512], stage_mixers=["glmix", "glmix", "glmix.mha_nchw", "mha_nchw"],
        mlp_ratios=3.0, stem="overlap", transition="conv_norm", cpe_kernel=3, mlp_dwconv=True,
        __doc__="GLNet-4G (27.0 M params, 4.5 GMACs)."),
    "glnet_9g": dict(
        depths=[4, 4, 18, 4], dims=[96, 192, 384, 768], stage_mixers=["glmix", "glmix", "glmix.mha_nchw", "mha_nchw"],
        mlp_ratios=3.0, stem="overlap", transition="conv_norm", cpe_kernel=3, mlp_dwconv=True,
        __doc__="GLNet-9G (60.0 M params, 9.6 GMACs)."),
    "glnet_16g": dict(
        depths=[4, 4, 18, 4], dims=[128, 256, 512, 1024], stage_mixers=["glmix", "glmix", "glmix.mha_nchw", "mha_nchw"],
        mlp_ratios=3.0, stem="overlap", transition="conv_norm", cpe_kernel=3, mlp_dwconv=True, layer_scale=1e-4,
        __doc__="GLNet-16G (106.1 M params, 16.7 GMACs), layer scale 1e-4."),
    "glnet_4g_tklb": dict(
        depths=[4, 4, 18, 4], dims=[64, 128, 256, 512], stage_mixers=["glmix", "glmix", "glmix.mha_nchw", "mha_nchw"],
        mlp_ratios=3.0, stem="overlap", transition="conv_norm", cpe_kernel=3, mlp_dwconv=True,
        use_aux_head=True, use_mix_token=True,
        __doc__="GLNet-4G trained with token labeling: a token head and MixToken (27.5 M params)."),
    "glnet_9g_tklb": dict(
        depths=[4, 4, 18, 4], dims=[96, 192, 384, 768], stage_mixers=["glmix", "glmix", "glmix.mha_nchw", "mha_nchw"],
        mlp_ratios=3.0, stem="overlap", transition="conv_norm", cpe_kernel=3, mlp_dwconv=True,
        use_aux_head=True, use_mix_token=True,
        __doc__="GLNet-9G trained with token labeling: a token head and MixToken (60.8 M params)."),
}

_ARG_FIELDS = {f.name: f for f in dataclasses.fields(GLNetArgs)}


def _named_description(name: str, settings: dict[str, Any]) -> type[GLNetArgs]:
    """``GLNetArgs`` with the named model's defaults: a class, so LightningCLI takes ``backbone: glnet_stl``
    and prints every field with the named model's value."""
    doc = settings.get("__doc__", name)
    fields = []
    for key, value in settings.items():
        if key == "__doc__":
            continue
        default = field(default_factory=lambda v=value: list(v)) if isinstance(value, list) else field(default=value)
        fields.append((key, _ARG_FIELDS[key].type, default))
    cls = dataclasses.make_dataclass(name, fields, bases=(GLNetArgs,), namespace={"__doc__": f"{doc}\n\n{GLNetArgs.__doc__.split(chr(10), 1)[1]}"})
    cls.__module__ = __name__
    return cls


def _entrypoint(name: str):
    def create(pretrained: bool = False, **kwargs: Any) -> GLNet:
        description = {k: kwargs.pop(k) for k in list(kwargs) if k in _ARG_FIELDS}
        return globals()[name](**description).build(pretrained=pretrained, **kwargs)

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = NAMED_MODELS[name].get("__doc__")
    return create


for _name, _settings in NAMED_MODELS.items():
    globals()[_name] = register_backbone(_name, _named_description(_name, _settings))  # the description, by name
    register_model(_entrypoint(_name))  # timm.create_model(name, ...)
