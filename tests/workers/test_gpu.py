"""The cascade on a CUDA device. Runs only where one is present (marker ``gpu``)."""

import time
from pathlib import Path

import pytest
import torch

from core.presets import StageParams, get_preset
from workers import cascade as stages
from workers.pipelines import load_cascade, pick_device
from workers.tiny_models import build_tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_deepfloyd_preset_picks_cuda_fp16() -> None:
    assert pick_device(get_preset("deepfloyd-if")) == ("cuda", torch.float16)


def test_tiny_cascade_runs_on_cuda(tmp_path: Path) -> None:
    build_tiny(tmp_path)
    cascade = load_cascade(get_preset("tiny"), tmp_path)
    assert cascade.device == "cuda"
    assert next(cascade.base.unet.parameters()).is_cuda
    params = {"base_64": StageParams(8, 7.0), "sr_256": StageParams(5, 4.0, 250), "sr_1024": StageParams(5, 9.0, 100)}
    stages.run_direct(cascade, "a corgi", num_images=1, seed=0, resolution=1024, params=params)  # warm-up
    start = time.perf_counter()
    images = stages.run_direct(cascade, "a corgi", num_images=1, seed=0, resolution=1024, params=params)
    print(f"tiny cascade on {torch.cuda.get_device_name()}: {time.perf_counter() - start:.2f} s")
    assert [images[name][0].size for name in ("base_64", "sr_256", "sr_1024")] == [(64, 64), (256, 256), (1024, 1024)]


def test_a_cpu_offloaded_base_stage_runs_and_keeps_its_weights_off_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config import get_settings

    build_tiny(tmp_path)
    monkeypatch.setenv("IMAGEN_CPU_OFFLOAD", "true")
    get_settings.cache_clear()
    try:
        cascade = load_cascade(get_preset("tiny"), tmp_path, parts=["text_encoder", "base_64"])
        assert not next(cascade.base.unet.parameters()).is_cuda, "offloaded: in CPU memory between calls"
        embeds = stages.encode_prompt(cascade, "a corgi")
        (image,) = stages.run_base(cascade, embeds, num_images=1, seed=0, steps=2, guidance_scale=7.0)
        assert image.size == (64, 64)
    finally:
        get_settings.cache_clear()
