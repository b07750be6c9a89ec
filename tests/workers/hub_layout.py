"""Every repository of the `deepfloyd-if` preset, laid out in a Hugging Face cache as the hub lays them out, with
tiny models (the `tiny` preset's builders) in place of the real ones.

Each repository is saved the way its real one is published: a diffusers pipeline with a `model_index.json` and
a folder per component, its weights twice, in fp32 (`diffusion_pytorch_model.safetensors`, `model.safetensors`)
and as the `fp16` variant (`diffusion_pytorch_model.fp16.safetensors`, `model.fp16.safetensors`; IF-I's T5 in
shards with their index, as the real 4.7 B-parameter one is), plus the legacy `.bin` files, a README and a
`.gitattributes` that no loader reads; the captioner and embedder are transformers models at the repository's
root. In the cache each lives at `models--Org--Name/snapshots/<revision>/...` as a link to a blob named by its
content's hash, with `refs/main` naming the revision.

What the real repositories hold beyond this (their exact file lists, and the weights themselves) has not been
checked against the hub here: these stand-ins follow what diffusers and transformers save.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from diffusers.pipelines.deepfloyd_if.pipeline_if import IFPipeline
from diffusers.pipelines.deepfloyd_if.pipeline_if_superresolution import IFSuperResolutionPipeline
from diffusers.pipelines.deepfloyd_if.safety_checker import IFSafetyChecker
from diffusers.pipelines.deepfloyd_if.watermark import IFWatermarker
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from core.presets import DEEPFLOYD_IF
from workers import tiny_models
from workers.if_pipelines import if_noising_scheduler
from workers.model_configs import TextTower, clip_config
from workers.pipelines import quiet_progress_bars
from workers.preprocessors import clip_image_processor

REVISION = "0123456789abcdef0123456789abcdef01234567"
# Files every hub repository has and no loader reads.
_REPO_EXTRAS = {"README.md": "# a stand-in\n", ".gitattributes": "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}


def cache_folder(cache: Path, repo_id: str) -> Path:
    """A repository's folder in a Hugging Face cache (`HF_HUB_CACHE`)."""
    return cache / f"models--{repo_id.replace('/', '--')}"


def build_repos(staging: Path) -> dict[str, Path]:
    """Save every repository of the `deepfloyd-if` preset under `staging` as the hub holds it; the folder of each."""
    stage_1, stage_2, stage_3 = (spec.source for spec in DEEPFLOYD_IF.stages)
    repos = {
        stage_1: staging / "if-i",
        stage_2: staging / "if-ii",
        stage_3: staging / "x4",
        DEEPFLOYD_IF.captioner.source: staging / "git",
        DEEPFLOYD_IF.embedder.source: staging / "clip",
    }
    with torch.random.fork_rng(devices=[]), quiet_progress_bars():
        torch.manual_seed(7)
        base = tiny_models._build_stage_1()
        safety = _safety_modules()
        if_i = IFPipeline(
            tokenizer=base.tokenizer,
            text_encoder=base.text_encoder,
            unet=base.unet,
            scheduler=base.scheduler,
            **safety,
            requires_safety_checker=True,
        )
        _save_pipeline(if_i, repos[stage_1])
        # T5-XXL is published in shards, with an index per variant: save it so, over the unsharded files.
        for variant, dtype in ((None, torch.float32), ("fp16", torch.float16)):
            encoder = repos[stage_1] / "text_encoder"
            for old in encoder.glob(f"model{'.' + variant if variant else ''}.safetensors"):
                old.unlink()
            base.text_encoder.to(dtype).save_pretrained(encoder, variant=variant, max_shard_size="60KB")
        base.text_encoder.to(torch.float32)

        sr = tiny_models._build_stage_2()
        if_ii = IFSuperResolutionPipeline(
            tokenizer=base.tokenizer,
            text_encoder=base.text_encoder,
            unet=sr.unet,
            scheduler=sr.scheduler,
            image_noising_scheduler=if_noising_scheduler(),
            **safety,
            requires_safety_checker=True,
        )
        _save_pipeline(if_ii, repos[stage_2])
        _save_pipeline(tiny_models._build_stage_3(), repos[stage_3])

        tiny_models._save_captioner(repos[DEEPFLOYD_IF.captioner.source])
        _save_embedder(repos[DEEPFLOYD_IF.embedder.source])
    for folder in (repos[DEEPFLOYD_IF.captioner.source], repos[DEEPFLOYD_IF.embedder.source]):
        _legacy_bin(folder / "model.safetensors", folder / "pytorch_model.bin")
    for folder in repos.values():
        for name, text in _REPO_EXTRAS.items():
            (folder / name).write_text(text)
    return repos


def repo_files(folder: Path) -> list[str]:
    """The files of a saved repository, as the hub lists them (paths relative to its root, with `/`)."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def lay_out(cache: Path, repo_id: str, folder: Path, files: Iterable[str]) -> Path:
    """Put `files` of the repository saved in `folder` into the cache as `snapshot_download` does; the snapshot."""
    root = cache_folder(cache, repo_id)
    snapshot = root / "snapshots" / REVISION
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(REVISION)
    for name in files:
        data = (folder / name).read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def _safety_modules() -> dict[str, object]:
    # IF's safety checker is a CLIP vision tower with two heads; its processor is CLIP's.
    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
            "projection_dim": 16,
        },
        projection_dim=16,
    )
    checker = IFSafetyChecker(config).eval()
    # Heads that flag nothing: random ones would black out random images.
    with torch.no_grad():
        for head in (checker.p_head, checker.w_head):
            head.weight.zero_()
            head.bias.fill_(-1.0)
    return {
        "safety_checker": checker,
        "feature_extractor": clip_image_processor(64),
        "watermarker": IFWatermarker(),
    }


def _save_pipeline(pipeline: DiffusionPipeline, folder: Path) -> None:
    pipeline.save_pretrained(folder, safe_serialization=True)
    pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    pipeline.to(torch.float32)
    for weights in list(folder.glob("*/*.safetensors")):
        _legacy_bin(weights, weights.with_suffix(".bin"))


def _save_embedder(folder: Path) -> None:
    # The preset's vectors are 512 long, as ViT-B/32's: only the projection keeps the real model's size.
    tokenizer = tiny_models._clip_tokenizer()
    vision = tiny_models._VISION
    config = clip_config(tokenizer, TextTower(width=32, layers=1), vision, projection_dim=DEEPFLOYD_IF.embedder.dim)
    CLIPModel(config).eval().save_pretrained(folder, safe_serialization=True)
    processor = CLIPProcessor(image_processor=clip_image_processor(vision.image_size), tokenizer=tokenizer)
    processor.save_pretrained(folder)


def _legacy_bin(safetensors: Path, target: Path) -> None:
    # The old pickle format, still on the hub beside the safetensors: never loaded here, so any bytes do.
    if safetensors.name.startswith("model") and target.name.startswith("model"):
        target = target.with_name("pytorch_" + target.name)
    shutil.copyfile(safetensors, target)
