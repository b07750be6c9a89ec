"""IF's pipelines as the local presets assemble them, with no safety checker, feature extractor or watermarker.

Those parts are models of their own, which the small presets do not ship.
"""

from __future__ import annotations

from typing import Any

from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.deepfloyd_if.pipeline_if import IFPipeline
from diffusers.pipelines.deepfloyd_if.pipeline_if_superresolution import IFSuperResolutionPipeline
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

# IF's cosine noise schedule: what its own samplers and stage II's noising of its input both follow.
IF_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "beta_start": 0.0001,
    "beta_end": 0.02,
}
_LEFT_OUT: dict[str, Any] = {
    "safety_checker": None,
    "feature_extractor": None,
    "watermarker": None,
    "requires_safety_checker": False,
}


def if_pipeline(
    unet: UNet2DConditionModel,
    scheduler: SchedulerMixin,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    text_encoder: PreTrainedModel | None = None,
) -> IFPipeline:
    """Stage I; without a text encoder it is given the prompt's embeddings."""
    return IFPipeline(
        # Optional components that the hints call mandatory.
        tokenizer=tokenizer,  # type: ignore[arg-type]
        text_encoder=text_encoder,  # type: ignore[arg-type]
        unet=unet,
        # diffusers hints its placeholder class, not the scheduler it means.
        scheduler=scheduler,  # type: ignore[arg-type]
        **_LEFT_OUT,
    )


def if_sr_pipeline(unet: UNet2DConditionModel, scheduler: SchedulerMixin) -> IFSuperResolutionPipeline:
    """Stage II, which takes stage I's prompt embeddings and so has no text encoder of its own."""
    return IFSuperResolutionPipeline(
        tokenizer=None,  # type: ignore[arg-type]
        text_encoder=None,  # type: ignore[arg-type]
        unet=unet,
        scheduler=scheduler,  # type: ignore[arg-type]
        image_noising_scheduler=if_noising_scheduler(),  # type: ignore[arg-type]
        **_LEFT_OUT,
    )


def if_noising_scheduler() -> DDPMScheduler:
    """IF-II's noise-conditioning augmentation of its low-resolution input."""
    return DDPMScheduler(**IF_SCHEDULE)
