"""Benchmark: generate jobs through the HTTP API vs the same cascade called in one process (tiny preset by default).

Prints end-to-end latency p50/p95 (jobs one at a time), per-stage run and queue-wait times, throughput
(a burst of jobs submitted at once), and the orchestration overhead: end-to-end time over the time of
the same cascade run directly, in this process, with the same parameters and thread count.

    python bench/cascade.py                       # starts `imagen-queue up` in a temporary data dir
    python bench/cascade.py --preset toy          # another local preset (each stage at its default steps)
    python bench/cascade.py --api-url URL --api-key KEY --jobs 20
    python bench/cascade.py --batching            # base-stage images/s: one image per pass vs a batched pass

`--batching` starts no service: for tiny and toy (or `--preset`) it runs the base stage in this process
for 4 and 8 images, once with IMAGEN_MAX_BATCH=1 (one image per forward pass, as before batching) and
once with all of them in one pass, and prints images/s of each, the gain, and how far the same seed's
image moved between the two (max absolute pixel difference, 0-255).
"""

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from cli.services import free_port
from core.presets import Preset, get_preset

PROMPT = "a corgi wearing a crown"


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _start_embedded(data_dir: Path, port: int, threads: int, preset: str) -> tuple[subprocess.Popen[bytes], str, str]:
    env = {
        **os.environ,
        "IMAGEN_DATA_DIR": str(data_dir),
        "IMAGEN_TORCH_THREADS": str(threads),
        "IMAGEN_MODEL_PRESET": preset,
    }
    log = open(data_dir / "up.log", "wb")  # noqa: SIM115 (kept for the child's lifetime)
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    key_file = data_dir / "admin_api_key"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"imagen-queue up exited; see {data_dir / 'up.log'}")
        try:
            if key_file.exists() and httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url, key_file.read_text().strip()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("the embedded system did not come up in 180 s")


def _wait(http: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return _succeeded(job)
        # Latency comes from the job's own timestamps; polling only paces the client, and slowly, so that
        # the API's answers take no CPU from the worker being measured.
        time.sleep(0.5)


def _succeeded(job: dict[str, Any]) -> dict[str, Any]:
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job['id']} {job['status']}: {job['error']}")
    return job


def _run_job(http: httpx.Client, seed: int) -> dict[str, Any]:
    """Submit a job and hold the answer until it ends (``Prefer: wait``): no polling beside the worker."""
    response = http.post("/v1/jobs", json=_body(seed), headers={"Prefer": "wait=60"})
    response.raise_for_status()
    job: dict[str, Any] = response.json()
    if job["status"] not in ("succeeded", "failed", "canceled"):
        return _wait(http, str(job["id"]))
    return _succeeded(job)


def _body(seed: int) -> dict[str, Any]:
    # Every stage at the preset's defaults, as the direct run below.
    return {"kind": "generate", "input": {"prompt": PROMPT, "seed": seed}}


def _submit(http: httpx.Client, seed: int) -> str:
    response = http.post("/v1/jobs", json=_body(seed))
    response.raise_for_status()
    return str(response.json()["id"])


def _direct_runner(models_dir: Path, threads: int, preset: Preset) -> Callable[[int], float]:
    """A function that runs the cascade in this process for a seed and returns its seconds."""
    import torch

    from workers.cascade import run_direct
    from workers.pipelines import get_cascade
    from workers.preset_files import build_preset

    torch.set_num_threads(threads)
    build_preset(preset, models_dir)
    cascade = get_cascade(preset.name, models_dir)

    def run(seed: int) -> float:
        start = time.perf_counter()
        run_direct(cascade, PROMPT, num_images=1, seed=seed, resolution=preset.final_resolution)
        return time.perf_counter() - start

    run(0)  # warm-up
    return run


def _timed_base(cascade: Any, embeds: Any, num_images: int, max_batch: int) -> tuple[float, list[Any]]:
    """The base stage at its preset's defaults: its seconds and its images."""
    from workers.cascade import run_base

    spec = cascade.preset.base_stage
    start = time.perf_counter()
    images = run_base(
        cascade,
        embeds,
        num_images=num_images,
        seed=0,
        steps=spec.default_steps,
        guidance_scale=spec.default_guidance,
        max_batch=max_batch,
    )
    return time.perf_counter() - start, images


def _batching_report(preset_names: list[str], models_dir: Path, threads: int, repeats: int) -> None:
    """Print the base stage's images/s at one image per pass vs one batched pass, and the pixel drift."""
    import numpy as np
    import torch

    from workers.cascade import encode_prompt
    from workers.pipelines import get_cascade
    from workers.preset_files import build_preset

    torch.set_num_threads(threads)
    print(f"base stage, one forward pass per image (max_batch 1) vs one batched pass; torch threads {threads}")
    print(f"{'preset':<8}{'images':>7}{'steps':>6}{'batch 1':>12}{'batched':>12}{'gain':>7}{'max px diff':>13}")
    for name in preset_names:
        preset = get_preset(name)
        build_preset(preset, models_dir)
        cascade = get_cascade(preset.name, models_dir)
        spec = preset.base_stage
        embeds = encode_prompt(cascade, PROMPT)
        for num_images in (4, 8):
            run = functools.partial(_timed_base, cascade, embeds, num_images)
            run(num_images)  # warm-up: the first pass of a shape in a process is slow
            # Alternating, best of `repeats`: the machine is shared and noisy.
            single, batched = [], []
            for _ in range(repeats):
                seconds, alone = run(1)
                single.append(seconds)
                seconds, together = run(num_images)
                batched.append(seconds)
            drift = max(
                int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
                for a, b in zip(alone, together, strict=True)
            )
            rate_single, rate_batched = num_images / min(single), num_images / min(batched)
            print(
                f"{preset.name:<8}{num_images:>7}{spec.default_steps:>6}{rate_single:>8.2f} i/s{rate_batched:>8.2f} i/s"
                f"{rate_batched / rate_single:>6.2f}x{drift:>13}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10, help="jobs run one at a time, for latency")
    parser.add_argument("--burst", type=int, default=10, help="jobs submitted at once, for throughput")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, worker and direct run alike")
    parser.add_argument("--preset", default="tiny", help="the model preset (the embedded system runs it too)")
    parser.add_argument("--api-url", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--batching", action="store_true", help="base-stage images/s, batch 1 vs batched, and drift")
    parser.add_argument("--repeats", type=int, default=2, help="--batching: timed runs of each, best kept")
    args = parser.parse_args()

    if args.batching:
        presets = [args.preset] if "--preset" in sys.argv else ["tiny", "toy"]
        _batching_report(presets, Path(tempfile.mkdtemp(prefix="imagen-bench-")), args.threads, args.repeats)
        return

    preset = get_preset(args.preset)
    data_dir = Path(tempfile.mkdtemp(prefix="imagen-bench-"))
    # The baseline: the same stages, parameters and thread count in this one process.
    run_direct = _direct_runner(data_dir / "direct-models", args.threads, preset)
    process = None
    if args.api_url:
        url, key = args.api_url, args.api_key or os.environ.get("IMAGEN_API_KEY", "")
    else:
        process, url, key = _start_embedded(data_dir, free_port(), args.threads, preset.name)
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=90)
    try:
        _run_job(http, 10_000)  # warm-up: the worker loads its models on first use

        # Direct runs and jobs alternate, so both see the same machine (this one is shared and noisy).
        sequential, direct = [], []
        for i in range(args.jobs):
            direct.append(run_direct(i))
            sequential.append(_run_job(http, i))

        burst_start = time.time()
        ids = [_submit(http, 1000 + i) for i in range(args.burst)]
        burst = [_wait(http, job_id) for job_id in ids]
        burst_seconds = max(_ts(j["finished_at"]) for j in burst) - burst_start
    finally:
        http.close()
        if process is not None:
            process.terminate()
            process.wait(60)

    e2e = [_ts(j["finished_at"]) - _ts(j["created_at"]) for j in sequential]
    keys = "/".join(preset.request_keys())
    steps = "/".join(str(spec.default_steps) for spec in preset.stages)
    print(f"{preset.name} preset, 1 image, steps {keys} = {steps}, torch threads {args.threads}")
    print(
        f"end-to-end latency, {args.jobs} jobs one at a time: p50 {_pct(e2e, 0.5):.2f} s, p95 {_pct(e2e, 0.95):.2f} s"
    )
    print(f"{'stage':<12}{'run p50':>10}{'run p95':>10}{'wait p50':>10}{'wait p95':>10}")
    for name in ["encode_text", *(spec.name for spec in preset.stages)]:
        runs = [s["duration_ms"] / 1000 for j in sequential for s in j["stages"] if s["name"] == name]
        waits = [
            _ts(s["started_at"]) - _ts(s["queued_at"]) for j in sequential for s in j["stages"] if s["name"] == name
        ]
        print(
            f"{name:<12}{_pct(runs, 0.5):>9.3f}s{_pct(runs, 0.95):>9.3f}s{_pct(waits, 0.5):>9.3f}s"
            f"{_pct(waits, 0.95):>9.3f}s"
        )
    print(
        f"throughput, {args.burst} jobs submitted at once: {args.burst / burst_seconds:.3f} jobs/s "
        f"({burst_seconds:.1f} s)"
    )

    ratio = statistics.median(e2e) / statistics.median(direct)
    print(
        f"same cascade called directly in one process, alternating with the jobs: "
        f"p50 {statistics.median(direct):.2f} s, p95 {_pct(direct, 0.95):.2f} s"
    )
    print(
        f"orchestration overhead: end-to-end / direct = {ratio:.3f} "
        f"(+{statistics.median(e2e) - statistics.median(direct):.2f} s per job)"
    )


if __name__ == "__main__":
    main()
