"""The `tiny` preset: random-weight stand-ins for the production models, built on this machine.

Each cascade stage uses the same pipeline and model classes as `deepfloyd-if`, shrunk to about a
million parameters, so the whole cascade runs in seconds on a CPU and exercises the same code paths;
the captioner (GIT) and the embedder (CLIP) are shrunk likewise. The build is deterministic: a fixed
seed and fixed vocabularies give the same weight files every time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.deepfloyd_if.pipeline_if import IFPipeline
from diffusers.pipelines.deepfloyd_if.pipeline_if_superresolution import IFSuperResolutionPipeline
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
    StableDiffusionUpscalePipeline,
)
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from transformers import (
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    GitForCausalLM,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from workers.atomic_build import build_atomically, read_marker
from workers.if_pipelines import IF_SCHEDULE, if_pipeline, if_sr_pipeline
from workers.model_configs import (
    TextTower,
    UNetWidths,
    VisionTower,
    clip_config,
    git_config,
    if_base_unet,
    if_sr_unet,
)
from workers.pipelines import quiet_progress_bars
from workers.preprocessors import (
    PRINTABLE_CHARS,
    clip_image_processor,
    clip_tokenizer,
    git_processor,
    wordpiece_vocabulary,
)

logger = logging.getLogger(__name__)

# Bump whenever a config below, or a shared builder it calls (model_configs.py, preprocessors.py,
# if_pipelines.py), changes, so folders built by an older version are rebuilt. A change to
# the CLIP embedder also needs a new `model_id` for the tiny preset's embedder in core/presets.py.
TINY_VERSION = "tiny-2"
TINY_DIR = "tiny"
STAGE_DIRS: tuple[str, ...] = ("stage_1", "stage_2", "stage_3")
CAPTION_DIR = "caption"
EMBED_DIR = "embed"

_SEED = 20240613
_TEXT_DIM = 32
# IF's text encoder was trained on 77-token prompts; the pipeline pads to that length.
_MAX_TOKENS = 77
# GroupNorm needs the group count to divide every block's width; the thinnest blocks have 8 channels.
_NORM_GROUPS = 8
_UNET_WIDTHS = UNetWidths(
    text_dim=_TEXT_DIM, cross_attention_dim=64, attention_head_dim=16, pooled_text_heads=2, norm_groups=_NORM_GROUPS
)
# The vision towers see 64x64 crops in 8x8 patches: 64 patches, about as many as ViT-B/32's 49 at
# 224 px, on a tower a few hundred times smaller.
_IMAGE_SIZE = 64
_VISION = VisionTower(width=64, layers=2, image_size=_IMAGE_SIZE, patch_size=8)
_CLIP_DIM = 64
# At the default initial scale, random CLIP towers squash every input to about the same direction
# (cosine ~0.999 between unrelated images). A larger scale makes the random features sensitive
# enough that search tells images, even the tiny cascade's noise-like ones, apart.
_CLIP_INIT_FACTOR = 6.0
# Likewise for GIT: at the default scale its decoder all but ignores the image, and captions of
# different images come out the same.
_GIT_INIT_RANGE = 0.1
_GIT_MAX_TOKENS = 128

# A fixed vocabulary, because a tokenizer trained at build time gets different ids on every run.
_WORD_LIST = """
a an the and or but of in on at to for with from by over under above below near into onto through
is are was were be been being has have had do does did will would can could should may might must
i you he she it we they me him her us them my your his its our their this that these those
one two three four five six seven eight nine ten many few some all every each other another
red orange yellow green blue purple pink brown black white gray grey gold silver dark light bright
big small large tiny huge little tall short long wide narrow old new young ancient modern
happy sad angry calm quiet loud soft hard warm cold hot wet dry clean dirty beautiful ugly cute
fast slow high low deep shallow heavy round square flat sharp smooth rough shiny glowing
cat cats dog dogs corgi puppy kitten bird birds fish horse cow pig sheep goat chicken duck owl
fox wolf bear lion tiger elephant monkey rabbit mouse frog snake turtle dragon unicorn butterfly
man woman boy girl child baby person people king queen prince princess knight wizard robot
astronaut pirate chef doctor teacher artist farmer soldier monster ghost alien angel
tree trees flower flowers grass leaf leaves forest garden park field farm mountain mountains
hill river lake sea ocean beach island desert sky cloud clouds sun moon star stars planet space
rain snow storm wind fire water ice stone rock sand earth night day morning evening sunset sunrise
city town village street road bridge house home castle tower church temple room kitchen window
door wall roof floor table chair bed book lamp clock car bus train boat ship plane bike rocket
apple banana cake bread pizza coffee tea cup bowl plate bottle glass box bag hat crown
shirt dress shoe shoes coat glasses mask sword shield flag ball toy guitar piano camera phone
painting photo picture portrait drawing sketch illustration render poster cartoon anime style
oil watercolor pencil digital art realistic photorealistic detailed highly quality studio
cinematic lighting background foreground close up view wearing holding sitting standing
running flying swimming walking jumping sleeping eating reading playing riding looking smiling
made wooden metal paper plastic golden crystal neon vintage retro futuristic fantasy
magic magical dream dreamy epic dramatic colorful vibrant pastel misty foggy sunny snowy rainy
top bottom left right front back side center middle inside outside between behind next
very more most less not no yes like as so then than just only also too again
love life world time year way thing place part word work hand head face eye eyes hair
mouth nose ear heart body arm leg foot food music game story shadow
"""


def build_tiny(models_dir: Path, *, force: bool = False) -> Path:
    """Build the tiny models under `models_dir`/tiny unless a complete build is there; return its path."""
    target = models_dir / TINY_DIR
    if not force and is_built(models_dir):
        logger.info("tiny models already built in %s", target)
        return target

    started = time.perf_counter()
    if build_atomically(target, TINY_VERSION, _save_models, force=force):
        logger.info("built tiny models in %s in %.2f s", target, time.perf_counter() - started)
    return target


def is_built(models_dir: Path) -> bool:
    """Whether `models_dir` holds a complete tiny build of the current version."""
    return read_marker(models_dir / TINY_DIR) == TINY_VERSION


def _save_models(folder: Path) -> None:
    builders: tuple[Callable[[], DiffusionPipeline], ...] = (_build_stage_1, _build_stage_2, _build_stage_3)
    # The global RNG is the only source of the random weights: seed it, and give it back untouched.
    with torch.random.fork_rng(devices=[]), quiet_progress_bars():
        for stage_dir, build in zip(STAGE_DIRS, builders, strict=True):
            torch.manual_seed(_SEED)
            build().save_pretrained(folder / stage_dir, safe_serialization=True)
        torch.manual_seed(_SEED)
        _save_captioner(folder / CAPTION_DIR)
        torch.manual_seed(_SEED)
        _save_embedder(folder / EMBED_DIR)


def _build_stage_1() -> IFPipeline:
    tokenizer = _t5_tokenizer()
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=_TEXT_DIM,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            # IF uses T5 v1.1, whose feed-forward is gated GELU.
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    # Attention only at 16x16, where it is cheap; IF attends at its lower resolutions too.
    unet = if_base_unet(_UNET_WIDTHS, sample_size=64, block_out_channels=(16, 32, 64))
    return if_pipeline(unet, _if_scheduler(), tokenizer=tokenizer, text_encoder=text_encoder)


def _build_stage_2() -> IFSuperResolutionPipeline:
    # Convolutions over 256x256 dominate the time, so the full-resolution level is the thinnest.
    unet = if_sr_unet(_UNET_WIDTHS, sample_size=256, block_out_channels=(8, 16, 32, 64))
    return if_sr_pipeline(unet, _if_scheduler())


def _build_stage_3() -> StableDiffusionUpscalePipeline:
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=_TEXT_DIM,
            intermediate_size=64,
            projection_dim=_TEXT_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=_MAX_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=256,
        # Four latent channels plus the three of the low-resolution image.
        in_channels=7,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=_TEXT_DIM,
        attention_head_dim=8,
        use_linear_projection=True,
        # Text-only attention, as in the x4 upscaler's attention blocks: cheap at any resolution.
        only_cross_attention=True,
        # The x4 upscaler embeds its noise level as a class label in [0, max_noise_level].
        num_class_embeds=1000,
        norm_num_groups=_NORM_GROUPS,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # Three blocks: two downsamplings, the x4 upscaler's factor of four between latents and pixels.
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        # Decoding to 1024x1024 is most of this stage's time: eight channels at full resolution.
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=_NORM_GROUPS,
        scaling_factor=0.08333,
        # Attention over a 256x256 latent is the bulk of the real model's memory; tiny leaves it out.
        mid_block_add_attention=False,
    )
    low_res_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="v_prediction",
    )
    return StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=low_res_scheduler,
        scheduler=scheduler,
        max_noise_level=350,
    )


def _save_captioner(folder: Path) -> None:
    processor = git_processor(
        folder, wordpiece_vocabulary(_unique_words()), image_size=_IMAGE_SIZE, max_tokens=_GIT_MAX_TOKENS
    )
    text = TextTower(width=64, layers=2)
    config = git_config(processor.tokenizer, text, _VISION, initializer_range=_GIT_INIT_RANGE)
    model = GitForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def _save_embedder(folder: Path) -> None:
    tokenizer = _clip_tokenizer()
    text = TextTower(width=_CLIP_DIM, layers=2)
    config = clip_config(tokenizer, text, _VISION, projection_dim=_CLIP_DIM, initializer_factor=_CLIP_INIT_FACTOR)
    model = CLIPModel(config).eval()
    processor = CLIPProcessor(image_processor=clip_image_processor(_IMAGE_SIZE), tokenizer=tokenizer)
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def _if_scheduler() -> DDPMScheduler:
    # IF's own scheduler settings: cosine betas, dynamic thresholding, learned variance.
    return DDPMScheduler(
        **IF_SCHEDULE,
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
        prediction_type="epsilon",
        variance_type="learned_range",
    )


def _unique_words() -> list[str]:
    return list(dict.fromkeys(_WORD_LIST.split()))


def _t5_tokenizer() -> T5Tokenizer:
    # Unigram scores: whole words beat the characters they are made of, longer words first.
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{word}", -float(len(word)) / 10.0 - 1.0) for word in _unique_words()]
    pieces += [(char, -10.0) for char in PRINTABLE_CHARS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=_MAX_TOKENS)


def _clip_tokenizer() -> CLIPTokenizer:
    return clip_tokenizer(_unique_words(), max_tokens=_MAX_TOKENS)
