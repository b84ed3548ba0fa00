"""Bridge to the reference implementation: its constructor arguments and its checkpoint names.

The published GLNet checkpoints (and the conformance fixtures in tests/models/conformance) use the reference
module names (``downsample_layers``, ``relation_mha.in_proj_weight``, ``feature_conv.1``, ...).
``convert_official_state_dict`` renames them to ours by rule, so one function serves the
fixtures, the published files and timm's ``pretrained=True`` path.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

# reference constructor argument -> ours (value converters below)
_KWARG_NAMES = {
    "depth": "depths", "embed_dim": "dims", "mlp_ratios": "mlp_ratios", "head_dim": "head_dim",
    "mixing_modes": "stage_mixers", "local_dw_ks": "kernel_size", "slot_init": "slot_init",
    "num_slots": "num_slots", "transition_layout": "transition", "cpe_ks": "cpe_kernel",
    "downsample_style": "stem", "mlp_dw": "mlp_dwconv", "layerscale": "layer_scale",
    "num_classes": "num_classes", "in_chans": "in_chans", "drop_path_rate": "drop_path_rate",
    "drop_rate": "drop_rate",
}
_KWARG_VALUES = {
    "slot_init": {"ada_avgpool": "pool", "param": "param"},
    "transition_layout": {"norm.proj": "norm_conv", "proj.norm": "conv_norm"},
    "downsample_style": {"ovlp": "overlap", "non_ovlp": "patch", "patch": "patch"},
}


def official_kwargs_to_ours(**official_kwargs: Any) -> dict[str, Any]:
    """Our ``GLNet`` keyword arguments for the reference constructor's (``glnet.glnet_from_official_kwargs``
    builds the model; this module only translates, so it needs nothing from the model code)."""
    unknown = sorted(set(official_kwargs) - set(_KWARG_NAMES))
    if unknown:
        raise ValueError(f"unsupported reference argument(s) {unknown}; known: {sorted(_KWARG_NAMES)}")
    ours: dict[str, Any] = {}
    for key, value in official_kwargs.items():
        table = _KWARG_VALUES.get(key)
        if table is not None:
            if value not in table:
                raise ValueError(f"reference {key}={value!r} is not supported; known values: {sorted(table)}")
            value = table[value]
        ours[_KWARG_NAMES[key]] = value
    ours["layer_scale"] = ours.get("layer_scale") or None  # the reference uses 0 / -1 for "off"
    if ours.get("layer_scale") is not None and ours["layer_scale"] < 0:
        ours["layer_scale"] = None
    ours.setdefault("stem", "patch")
    return ours


_BLOCK_RULES = [
    # (pattern on the part after "stages.i.blocks.j.", replacement)
    (r"^slot_scale$", "mixer.global_branch.clustering.tau"),
    (r"^init_slots$", "mixer.global_branch.slot_init.slots"),
    (r"^pos_conv\.", "cpe.proj."),
    (r"^relation_mha\.in_proj_(weight|bias)$", r"mixer.global_branch.relation.qkv.\1"),
    (r"^relation_mha\.out_proj\.", "mixer.global_branch.relation.proj."),
    (r"^mha_op\.in_proj_(weight|bias)$", r"attn.qkv.\1"),
    (r"^mha_op\.out_proj\.", "attn.proj."),
    (r"^feature_conv\.0\.", "mixer.local_branch.proj_in."),
    (r"^feature_conv\.1\.", "mixer.local_branch.dwconv."),
    (r"^feature_conv\.2\.", "mixer.local_branch.proj_out."),
    (r"^mlp\.0\.", "mlp.fc1."),
    (r"^mlp\.1\.", "mlp.dwconv."),  # conv MLP: the residual depthwise conv
    (r"^mlp\.[23]\.", "mlp.fc2."),  # token MLP has fc2 at 2 (GELU at 1), conv MLP at 3
    (r"^(norm[12]\.|ls[12]\.gamma$)", r"\1"),
]


def is_official_state_dict(state_dict: Mapping[str, Any]) -> bool:
    return any(k.startswith("downsample_layers.") for k in state_dict)


def _convert_key(key: str, overlap_stem: bool) -> str:
    m = re.match(r"^downsample_layers\.(\d+)\.(\d+)\.(.+)$", key)
    if m:
        stage, index, rest = int(m[1]), int(m[2]), m[3]
        if stage == 0:  # the reference overlap stem starts with a parameter-free layer
            return f"stem.{index - 1 if overlap_stem else index}.{rest}"
        return f"stages.{stage}.downsample.{index}.{rest}"
    m = re.match(r"^(stages\.\d+\.blocks\.\d+\.)(.+)$", key)
    if m:
        for pattern, replacement in _BLOCK_RULES:
            if re.search(pattern, m[2]):
                return m[1] + re.sub(pattern, replacement, m[2])
        raise KeyError(key)
    if re.match(r"^(norm|head)\.", key):
        return key
    if key.startswith("tklb_aux_head."):  # GLNet_tklb's token head, timm's aux_head
        return "aux_head." + key.removeprefix("tklb_aux_head.")
    raise KeyError(key)


def convert_official_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map reference parameter names and shapes to ours (layer scales become (C,) vectors); takes the flat
    state dict (``models/weights.py`` finds it in a file)."""
    overlap_stem = "downsample_layers.0.0.weight" not in state_dict
    out, unknown = {}, []
    for key, value in state_dict.items():
        try:
            new_key = _convert_key(key, overlap_stem)
        except KeyError:
            unknown.append(key)
            continue
        if new_key.endswith((".ls1.gamma", ".ls2.gamma")):
            value = value.reshape(-1)
        out[new_key] = value
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) of the checkpoint are not GLNet reference keys: {unknown[:8]}")
    return out


# (stem, stem width, learned slots, token head) -> the published model
_PUBLISHED = {("patch", 96, False, False): "glnet_stl", ("patch", 96, True, False): "glnet_stl_paramslot",
              ("overlap", 64, False, False): "glnet_4g", ("overlap", 96, False, False): "glnet_9g",
              ("overlap", 128, False, False): "glnet_16g",
              ("overlap", 64, False, True): "glnet_4g_tklb", ("overlap", 96, False, True): "glnet_9g_tklb"}


def identify_published_model(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Which named model a (converted) state dict belongs to, from its stem, width, slot init and token head."""
    overlap = "stem.3.weight" in state_dict
    stem_out = state_dict.get("stem.3.weight" if overlap else "stem.0.weight")
    if stem_out is None:
        return None
    param_slots = any(k.endswith(".slot_init.slots") for k in state_dict)
    token_head = "aux_head.weight" in state_dict
    return _PUBLISHED.get(("overlap" if overlap else "patch", stem_out.shape[0], param_slots, token_head))
