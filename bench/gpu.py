"""Benchmark for a machine with CUDA: base-stage images/s by batch, GPU memory per stage group, one job end to end.

For each local preset (tiny and toy, built on the machine; or `--preset`), on the GPU in fp16, it prints:

- images/s of the base stage at batch 1, 8, 16 and 32: one forward pass over the whole batch, one
  seeded generator per image, as `run_base` does; then the target of a GPU worker, batch 16 at 4x the
  images/s of batch 1 or more, with PASS or MISS;
- the GPU memory each stage group's worker holds: the group's models loaded alone, then one run of
  `--vram-batch` images (IMAGEN_MAX_BATCH's default), as torch.cuda.memory_allocated after loading and
  torch.cuda.max_memory_allocated over the run. Groups: text (the text encoder), base (stage I's UNet),
  sr (every super-resolution stage), caption, embed;
- one generate job through the HTTP API: `imagen-queue up` in a temporary data dir, a warm-up job (the
  worker loads its models), then `--jobs` jobs one at a time, each timed from its own created_at to its
  finished_at, with each stage's run time.

    python bench/gpu.py                          # tiny and toy, on the GPU
    python bench/gpu.py --preset toy --repeats 5
    python bench/gpu.py --allow-cpu --preset tiny  # the same code on the CPU at small sizes: checks the script

fp16: the bench loads every model in half precision on CUDA. The toy preset runs so in production too;
tiny runs fp32 there (its random weights overflow in half precision, see core/presets.py), so its fp16
figures measure speed and memory, not images, and the non-finite column counts the images that came out
NaN or inf. The job through the API runs as production does: tiny in fp32, toy in fp16.

The base stage is timed by calling stage I's pipeline directly: `run_base` takes at most a job's
MAX_IMAGES_PER_JOB images per call, and batches of 16 and 32 are the point here. Warm-up passes come
before every timed one, and torch.cuda.synchronize closes each timed region.

Without CUDA it exits with status 2; `--allow-cpu` runs the same code on the CPU instead, in fp32, at
small sizes: batches 1, 2 and 4, memory runs of one image, 2 denoising steps everywhere (the base stage and
every stage of the one timed job), memory reported as n/a, no verdict.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import PIL.Image
import torch
from diffusers.pipelines.deepfloyd_if.pipeline_if import IFPipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, not an installed copy

from bench.cascade import PROMPT, _start_embedded, _ts, _wait
from cli.services import free_port
from core.limits import DEFAULT_MAX_BATCH
from core.presets import Preset, get_preset
from workers.captioning import caption_images
from workers.cascade import encode_prompt
from workers.embedding import embed_images, embed_texts
from workers.pipelines import TEXT_ENCODER, load_cascade, pick_device
from workers.preset_files import build_preset
from workers.stage_outputs import PromptEmbeds
from workers.vision_models import load_captioner, load_embedder

GPU_BATCHES = (1, 8, 16, 32)
CPU_BATCHES = (1, 2, 4)
# The target: on a GPU, the base stage at batch 16 makes at least 4x the images/s of batch 1.
TARGET_BATCH = 16
TARGET_GAIN = 4.0
# Denoising steps where their number does not matter (memory is a matter of shapes) or on the CPU.
SHORT_STEPS = 2
MIB = 2**20


def _fp16(preset: Preset) -> Preset:
    """`preset` as it would run on CUDA in half precision (pick_device reads fp16_on_cuda)."""
    return dataclasses.replace(preset, fp16_on_cuda=True)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _generators(batch: int) -> list[torch.Generator]:
    # As run_base: one CPU generator per image, seeded seed + i.
    return [torch.Generator(device="cpu").manual_seed(index) for index in range(batch)]


def _on(embeds: PromptEmbeds, device: str, dtype: torch.dtype, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A prompt's embeddings once per image of `batch`, where the model is (the pipeline doubles them for CFG)."""
    return (
        embeds.prompt_embeds.to(device, dtype).repeat(batch, 1, 1),
        embeds.negative_embeds.to(device, dtype).repeat(batch, 1, 1),
    )


def _base_pass(pipeline: IFPipeline, embeds: PromptEmbeds, preset: Preset, batch: int, steps: int) -> torch.Tensor:
    """One pass of the base stage over `batch` images, with the arguments run_base gives it."""
    spec = preset.base_stage
    prompt_embeds, negative_embeds = _on(embeds, str(pipeline.device.type), pipeline.unet.dtype, batch)
    output = pipeline(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        num_inference_steps=steps,
        guidance_scale=spec.default_guidance,
        height=spec.resolution,
        width=spec.resolution,
        generator=_generators(batch),
        output_type="pt",
        clean_caption=False,
    )
    images: torch.Tensor = output.images
    return images


def _throughput(preset: Preset, models_dir: Path, batches: tuple[int, ...], steps: int, repeats: int) -> None:
    """Print the base stage's images/s at each batch size, and the batch-16 target's verdict."""
    cascade = load_cascade(_fp16(preset), models_dir)
    device = cascade.device
    embeds = encode_prompt(cascade, PROMPT)
    rates: dict[int, float] = {}
    for batch in batches:
        _base_pass(cascade.base, embeds, preset, batch, steps)  # warm-up: the first pass of a shape is slow
        _sync(device)
        seconds = []
        non_finite = 0
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            images = _base_pass(cascade.base, embeds, preset, batch, steps)
            _sync(device)
            seconds.append(time.perf_counter() - start)
            non_finite = int((~torch.isfinite(images.flatten(1)).all(dim=1)).sum())
        median = statistics.median(seconds)
        rates[batch] = batch / median
        print(
            f"{preset.name:<8}{_dtype_name(cascade.dtype):>6}{batch:>7}{steps:>7}{median:>11.3f} s"
            f"{rates[batch]:>10.1f}{non_finite:>12}"
        )
    compared = TARGET_BATCH if TARGET_BATCH in rates else max(rates)
    gain = rates[compared] / rates[batches[0]]
    verdict = "no verdict: the target is for a GPU"
    if device == "cuda" and compared == TARGET_BATCH:
        verdict = f"target >= {TARGET_GAIN:g}x: {'PASS' if gain >= TARGET_GAIN else 'MISS'}"
    print(f"{preset.name}: batch {compared} / batch {batches[0]} = {gain:.2f}x images/s ({verdict})")
    del cascade
    _free(device)


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _measure(device: str, load: Callable[[], Any], run: Callable[[Any], object]) -> tuple[int, int] | None:
    """(bytes held once loaded, peak bytes over one run) of a group's models; None off CUDA."""
    _free(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    models = load()
    _sync(device)
    loaded = torch.cuda.memory_allocated() - before if device == "cuda" else 0
    run(models)
    _sync(device)
    peak = torch.cuda.max_memory_allocated() - before if device == "cuda" else 0
    del models
    _free(device)
    return (loaded, peak) if device == "cuda" else None


def _noise_images(resolution: int, count: int) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    return [
        PIL.Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)) for _ in range(count)
    ]


def _group_memory(preset: Preset, models_dir: Path, batch: int) -> None:
    """Print what each stage group's worker holds on the device: its models alone, then over one run."""
    preset = _fp16(preset)
    device, dtype = pick_device(preset)
    base_spec = preset.base_stage
    kept: dict[str, PromptEmbeds] = {}

    def encode(pipeline: IFPipeline) -> None:
        prompt_embeds, negative_embeds = pipeline.encode_prompt(
            PROMPT, do_classifier_free_guidance=True, device=torch.device(device), clean_caption=False
        )
        kept["embeds"] = PromptEmbeds(prompt_embeds.cpu(), negative_embeds.cpu())

    def denoise_base(pipeline: IFPipeline) -> None:
        _base_pass(pipeline, kept["embeds"], preset, batch, SHORT_STEPS)

    def upscale(pipelines: dict[str, Any]) -> None:
        for spec in preset.stages[1:]:
            source = preset.stages[preset.stages.index(spec) - 1].resolution
            common: dict[str, Any] = {
                "image": _noise_images(source, batch),
                "num_inference_steps": SHORT_STEPS,
                "guidance_scale": spec.default_guidance,
                "noise_level": spec.default_noise_level,
                "generator": _generators(batch),
            }
            if spec.kind == "if_sr":
                prompt_embeds, negative_embeds = _on(kept["embeds"], device, dtype, batch)
                pipelines[spec.name](
                    prompt_embeds=prompt_embeds,
                    negative_prompt_embeds=negative_embeds,
                    height=spec.resolution,
                    width=spec.resolution,
                    output_type="pt",
                    clean_caption=False,
                    **common,
                )
            else:  # the x4 upscaler encodes the prompt with its own text encoder
                pipelines[spec.name](prompt=[PROMPT] * batch, output_type="pil", **common)

    def load_parts(*parts: str) -> Any:
        # The parts a stage worker loads, exactly as it loads them (workers.pipelines).
        return load_cascade(preset, models_dir, parts=list(parts))

    images = _noise_images(preset.final_resolution, batch)
    groups: list[tuple[str, str, Callable[[], Any], Callable[[Any], object]]] = [
        (
            "text",
            "the text encoder, one prompt",
            lambda: load_parts(TEXT_ENCODER),
            lambda cascade: encode(cascade.text_encoder),
        ),
        (
            "base",
            f"{base_spec.name}, batch {batch}",
            lambda: load_parts(base_spec.name),
            lambda cascade: denoise_base(cascade.base),
        ),
        (
            "sr",
            f"{', '.join(spec.name for spec in preset.stages[1:])}, batch {batch}",
            lambda: load_parts(*(spec.name for spec in preset.stages[1:])),
            lambda cascade: upscale({name: part.pipeline for name, part in cascade.parts.items()}),
        ),
        (
            "caption",
            "1 image, 20 tokens",
            lambda: load_captioner(preset, models_dir),
            lambda captioner: caption_images(captioner, images[:1], max_new_tokens=20),
        ),
        (
            "embed",
            f"batch {batch} of images, 1 text",
            lambda: load_embedder(preset, models_dir),
            lambda embedder: (embed_images(embedder, images), embed_texts(embedder, [PROMPT])),
        ),
    ]
    for group, what, load, run in groups:
        measured = _measure(device, load, run)
        loaded, peak = ("n/a", "n/a") if measured is None else (f"{measured[0] / MIB:.1f}", f"{measured[1] / MIB:.1f}")
        print(f"{preset.name:<8}{_dtype_name(dtype):>6}  {group:<9}{loaded:>12}{peak:>12}   {what}")


def _submit(http: httpx.Client, preset: Preset, seed: int, steps: int | None) -> str:
    """A one-image generate job at the preset's final resolution: every stage at `steps`, or its default."""
    body: dict[str, Any] = {"kind": "generate", "input": {"prompt": PROMPT, "seed": seed}}
    if steps is not None:
        body["input"]["stages"] = {key: {"steps": steps} for key in preset.request_keys()}
    response = http.post("/v1/jobs", json=body)
    response.raise_for_status()
    return str(response.json()["id"])


def _api_jobs(preset: Preset, data_dir: Path, threads: int, jobs: int, steps: int | None) -> None:
    """Print one generate job's end-to-end time through the API, and its stages' run times."""
    data_dir.mkdir(parents=True)
    process, url, key = _start_embedded(data_dir, free_port(), threads, preset.name)
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    try:
        _wait(http, _submit(http, preset, 10_000, steps))  # warm-up: the worker loads its models on first use
        done = [_wait(http, _submit(http, preset, seed, steps)) for seed in range(jobs)]
    finally:
        http.close()
        process.terminate()
        process.wait(60)
    e2e = [_ts(job["finished_at"]) - _ts(job["created_at"]) for job in done]
    device, dtype = pick_device(preset)
    runs = [stage for job in done for stage in job["stages"]]
    stage_ms = {
        name: statistics.median(stage["duration_ms"] for stage in runs if stage["name"] == name)
        for name in ["encode_text", *(spec.name for spec in preset.stages)]
    }
    stages = ", ".join(f"{name} {ms:.0f} ms" for name, ms in stage_ms.items())
    how = "stages at their defaults" if steps is None else f"{steps} steps a stage"
    print(
        f"{preset.name}: 1 image at {preset.final_resolution} px, {how}, worker on {device}"
        f" ({_dtype_name(dtype)}): end to end p50 {statistics.median(e2e):.2f} s over {jobs} job(s)"
        f" (min {min(e2e):.2f}, max {max(e2e):.2f})"
    )
    print(f"{preset.name}: stage run times p50: {stages}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.").replace("float", "fp")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", action="append", help="a local preset (repeatable; default: tiny and toy)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per batch size, median kept")
    parser.add_argument("--steps", type=int, default=None, help="base-stage steps (default: the preset's)")
    parser.add_argument("--vram-batch", type=int, default=DEFAULT_MAX_BATCH, help="images per run, memory section")
    parser.add_argument("--jobs", type=int, default=3, help="timed jobs through the API, one at a time")
    parser.add_argument("--threads", type=int, default=2, help="torch threads here and in the embedded worker")
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, run on the CPU at small sizes")
    args = parser.parse_args()

    presets = [get_preset(name) for name in (args.preset or ["tiny", "toy"])]
    if not all(preset.local for preset in presets):
        raise SystemExit("bench/gpu.py runs local presets only (tiny, toy): they are built on the machine")
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.allow_cpu:
        print("bench/gpu.py needs a CUDA device and found none; --allow-cpu runs it on the CPU", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    batches = GPU_BATCHES if on_gpu else CPU_BATCHES
    vram_batch = args.vram_batch if on_gpu else 1
    jobs = args.jobs if on_gpu else 1
    repeats = args.repeats if on_gpu else 1
    data_dir = Path(tempfile.mkdtemp(prefix="imagen-gpu-bench-"))
    models_dir = data_dir / "models"
    for preset in presets:
        build_preset(preset, models_dir)
    # The embedded systems started below find the presets built here and do not build them again.
    os.environ["IMAGEN_MODELS_DIR"] = str(models_dir)

    where = torch.cuda.get_device_name() if on_gpu else f"CPU ({args.threads} threads), small sizes: no verdicts"
    print(f"device: {where}; torch {torch.__version__}")
    print("\nbase stage, one forward pass per batch (CFG), median of", repeats, "timed pass(es) after a warm-up")
    print(f"{'preset':<8}{'dtype':>6}{'batch':>7}{'steps':>7}{'per pass':>13}{'images/s':>10}{'non-finite':>12}")
    for preset in presets:
        steps = args.steps or (preset.base_stage.default_steps if on_gpu else SHORT_STEPS)
        _throughput(preset, models_dir, batches, steps, repeats)

    print("\nmemory per stage group, each group's models loaded alone (MiB; allocated by torch, not the CUDA context)")
    print(f"{'preset':<8}{'dtype':>6}  {'group':<9}{'loaded':>12}{'peak':>12}   run")
    for preset in presets:
        _group_memory(preset, models_dir, vram_batch)

    print("\none generate job through the HTTP API (imagen-queue up, a warm-up job first)")
    for preset in presets:
        _api_jobs(preset, data_dir / f"up-{preset.name}", args.threads, jobs, None if on_gpu else SHORT_STEPS)


if __name__ == "__main__":
    main()
