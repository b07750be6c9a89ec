"""The shapes of the small models that the local presets build or train, as functions of their sizes.

The `tiny` preset builds these with random weights (workers/tiny_models.py) and the `toy` preset trains
them (training/); both follow the production models' architectures, shrunk: IF's UNets, CLIP, GIT. A change
here changes both: the tiny build (bump its TINY_VERSION) and the architectures that the toy preset's
committed weights were trained for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig, GitConfig, GitVisionConfig
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

# Every transformer here has four heads and a feed-forward layer twice its width.
_HEADS = 4
_FEED_FORWARD_RATIO = 2


@dataclass(frozen=True)
class UNetWidths:
    """What an IF-style UNet's blocks share, whatever its resolution."""

    # The width of the text encoder's token states, which the UNet projects to `cross_attention_dim`.
    text_dim: int
    cross_attention_dim: int
    attention_head_dim: int
    # Heads of the attention that pools the text states into the time embedding.
    pooled_text_heads: int
    # GroupNorm needs the group count to divide every block's width.
    norm_groups: int


@dataclass(frozen=True)
class TextTower:
    """The text transformer of a CLIP or GIT; it takes texts as long as its tokenizer makes them."""

    width: int
    layers: int


@dataclass(frozen=True)
class VisionTower:
    """The vision transformer of a CLIP or GIT: width, depth, and the square images it sees in square patches."""

    width: int
    layers: int
    image_size: int
    patch_size: int


def if_base_unet(widths: UNetWidths, *, sample_size: int, block_out_channels: tuple[int, ...]) -> UNet2DConditionModel:
    """IF stage I's UNet: text to image, attending to the text only at its lowest resolution, where it is cheap."""
    return _if_unet(widths, sample_size, block_out_channels, in_channels=3)


def if_sr_unet(widths: UNetWidths, *, sample_size: int, block_out_channels: tuple[int, ...]) -> UNet2DConditionModel:
    """IF stage II's UNet: the noisy image beside the upsampled low-resolution one it is conditioned on."""
    return _if_unet(
        widths,
        sample_size,
        block_out_channels,
        in_channels=6,
        # Like IF-II: the augmentation noise level enters as a second timestep embedding.
        class_embed_type="timestep",
        mid_block_scale_factor=1.414,
        time_embedding_act_fn="gelu",
    )


def clip_config(
    tokenizer: PreTrainedTokenizerBase,
    text: TextTower,
    vision: VisionTower,
    *,
    projection_dim: int,
    initializer_factor: float = 1.0,
) -> CLIPConfig:
    """A CLIP whose two towers are projected to `projection_dim`; `initializer_factor` scales every initial weight."""
    projected: dict[str, Any] = {"projection_dim": projection_dim, "initializer_factor": initializer_factor}
    text_config = CLIPTextConfig(
        **_text_sizes(text, tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **projected,
    )
    vision_config = CLIPVisionConfig(**_vision_sizes(vision), **projected)
    return CLIPConfig(text_config=text_config, vision_config=vision_config, **projected)


def git_config(
    tokenizer: PreTrainedTokenizerBase, text: TextTower, vision: VisionTower, *, initializer_range: float = 0.02
) -> GitConfig:
    """A GIT captioner; its tokenizer's [CLS] starts a caption and its [SEP] ends one."""
    return GitConfig(
        vision_config=GitVisionConfig(**_vision_sizes(vision), initializer_range=initializer_range),
        **_text_sizes(text, tokenizer),
        initializer_range=initializer_range,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )


def _if_unet(
    widths: UNetWidths, sample_size: int, block_out_channels: tuple[int, ...], *, in_channels: int, **extra: Any
) -> UNet2DConditionModel:
    levels = len(block_out_channels)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        # IF predicts the noise (or velocity) and a variance ("learned_range"): twice the image's channels.
        out_channels=6,
        layers_per_block=1,
        down_block_types=(*("ResnetDownsampleBlock2D",) * (levels - 1), "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", *("ResnetUpsampleBlock2D",) * (levels - 1)),
        block_out_channels=block_out_channels,
        cross_attention_dim=widths.cross_attention_dim,
        # IF's learned projection and normalization of the text encoder's states, in front of attention.
        encoder_hid_dim=widths.text_dim,
        encoder_hid_dim_type="text_proj",
        attention_head_dim=widths.attention_head_dim,
        addition_embed_type="text",
        addition_embed_type_num_heads=widths.pooled_text_heads,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=widths.norm_groups,
        **extra,
    )


def _text_sizes(text: TextTower, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        **_transformer_sizes(text.width, text.layers),
        "vocab_size": len(tokenizer),
        "max_position_embeddings": tokenizer.model_max_length,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _vision_sizes(vision: VisionTower) -> dict[str, Any]:
    return {
        **_transformer_sizes(vision.width, vision.layers),
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
    }


def _transformer_sizes(width: int, layers: int) -> dict[str, Any]:
    return {
        "hidden_size": width,
        "intermediate_size": _FEED_FORWARD_RATIO * width,
        "num_hidden_layers": layers,
        "num_attention_heads": _HEADS,
    }
