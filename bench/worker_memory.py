"""Benchmark: what a stage worker holds. The memory (RSS) of a model worker on every model queue vs one on
``--queues base`` only, after each has run the same job, against the size of the models the base worker
does not load.

Two systems run one after the other, each from the test suite's helpers (Postgres, Redis, an S3 server,
the API, the control worker):

  all    one model worker on every model queue (the embedded default)
  split  a ``--queues base`` worker, and one on text,sr,caption,embed for the rest of the job

Each runs the same generate job (one image, captioned and indexed, so that every model of the preset is
used), and a second one after it; then the bench reads each worker's VmRSS from /proc and its models from
the worker's own report (``/metrics``'s ``imagen_worker_models_loaded``). The size of each model part is
the bytes of its weights (parameters and buffers), loaded in this process.

    python bench/worker_memory.py                 # toy preset, about 2 minutes on 2 cores
    python bench/worker_memory.py --preset tiny

Target: all - base >= the weights of the parts the base worker does not hold. Exit status 1 if it misses
or a job fails.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, not an installed copy

import httpx

from bench.throughput import _build_models, _cli, _memory_kb
from core.presets import get_preset
from core.routing import MODEL_QUEUES
from tests.servers import ChildProcess, System, wait_until

PROMPT = "a red circle at the left"
MB = 1024 * 1024
_GAUGE = re.compile(r"^imagen_worker_models_loaded\{([^}]*)\} 1(?:\.0)?$", re.MULTILINE)


def _module_bytes(module: Any) -> int:
    import torch

    if not isinstance(module, torch.nn.Module):
        return 0
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def part_sizes(preset_name: str, models_dir: Path) -> dict[str, int]:
    """Bytes of the weights of each model part of the preset, as a worker loads it."""
    from workers.pipelines import load_cascade, part_names
    from workers.vision_models import load_captioner, load_embedder

    preset = get_preset(preset_name)
    sizes: dict[str, int] = {}
    for name in part_names(preset):
        # Each part alone, as a worker of its queue alone loads it (an SR stage that borrows modules loads them).
        pipeline = load_cascade(preset, models_dir, parts=[name]).part(name).pipeline
        sizes[name] = sum(_module_bytes(component) for component in pipeline.components.values())
    sizes["captioner"] = _module_bytes(load_captioner(preset, models_dir).model)
    sizes["embedder"] = _module_bytes(load_embedder(preset, models_dir).model)
    return sizes


class Layout:
    """One system, with the model workers given by name and queues."""

    def __init__(self, preset: str, models_dir: Path, workers: dict[str, tuple[str, ...]], threads: int) -> None:
        self.system = System(preset=preset, env_overrides={"IMAGEN_MODELS_DIR": str(models_dir)})
        self.workers = workers
        self.threads = threads
        self.children: dict[str, ChildProcess] = {}
        self.http: httpx.Client | None = None

    def start(self) -> None:
        system = self.system
        system.start_stores()
        env = system.env
        _cli(["migrate"], env)
        key = _cli(["keys", "create", "--tenant", "bench"], env).strip().splitlines()[-1]
        self.children["api"] = system.new_api("api", system.api_port)
        self.children["control"] = system.new_control_worker("control")
        for name, queues in self.workers.items():
            worker_env = {"IMAGEN_TORCH_THREADS": str(self.threads)}
            self.children[name] = system.new_worker(name, env=worker_env, queues=queues)

        def ready() -> bool:
            for child in self.children.values():
                if not child.alive():
                    raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            try:
                return httpx.get(f"{system.api_url}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, 90, "the API to be ready")
        self.http = httpx.Client(base_url=system.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=90)

    def run_job(self, seed: int) -> None:
        assert self.http is not None
        body = {"kind": "generate", "input": {"prompt": PROMPT, "seed": seed, "caption": True, "index": True}}
        response = self.http.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"})
        response.raise_for_status()
        job_id = response.json()["id"]

        def ended() -> dict[str, Any] | None:
            assert self.http is not None
            job: dict[str, Any] = self.http.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "canceled") else None

        job = wait_until(ended, 600, f"job {job_id} to end", interval_s=0.5)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")

    def held(self) -> dict[str, set[str]]:
        """The models each worker says it holds, by worker name (from /metrics, whose workers are host:pid)."""
        assert self.http is not None
        text = self.http.get("/metrics").text
        by_pid: dict[str, set[str]] = {}
        for match in _GAUGE.finditer(text):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            by_pid.setdefault(labels["worker"].rsplit(":", 1)[-1], set()).add(labels["model"])
        pids = {name: str(child.process.pid) for name, child in self.children.items() if child.process is not None}
        return {name: by_pid.get(pids[name], set()) for name in self.workers}

    def memory_mb(self, name: str) -> float:
        return _memory_kb(self.children[name])[0] / 1024

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        for child in self.children.values():
            child.stop()
        self.system.stop()
        shutil.rmtree(self.system.root, ignore_errors=True)


def measure(preset: str, models_dir: Path, workers: dict[str, tuple[str, ...]], threads: int) -> dict[str, Any]:
    layout = Layout(preset, models_dir, workers, threads)
    try:
        layout.start()
        for seed in (1, 2):
            layout.run_job(seed)
        time.sleep(1)  # the workers settle (freed activations go back to the allocator)
        return {"rss": {name: layout.memory_mb(name) for name in workers}, "held": layout.held()}
    finally:
        layout.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="toy", help="the model preset (default toy)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each model worker")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    models_dir = Path(tempfile.mkdtemp(prefix="imagen-bench-models-"))
    try:
        _build_models(args.preset, models_dir)
        sizes = part_sizes(args.preset, models_dir)
        rest = tuple(queue for queue in MODEL_QUEUES if queue != "base")
        every = measure(args.preset, models_dir, {"worker": MODEL_QUEUES}, args.threads)
        split = measure(args.preset, models_dir, {"worker-base": ("base",), "worker-rest": rest}, args.threads)
    finally:
        shutil.rmtree(models_dir, ignore_errors=True)

    print(f"{args.preset} preset, one generate job (captioned and indexed) run twice; torch threads {args.threads}")
    print(f"{'model part':<16}{'weights':>10}")
    for name, size in sizes.items():
        print(f"{name:<16}{size / MB:>8.1f} MB")
    all_rss, base_rss = every["rss"]["worker"], split["rss"]["worker-base"]
    base_holds = split["held"].get("worker-base", set())
    not_held = sum(size for name, size in sizes.items() if name not in base_holds) / MB
    print(f"{'worker':<24}{'queues':<34}{'RSS':>10}   holds")
    for label, outcome, name, queues in (
        ("all-queue", every, "worker", MODEL_QUEUES),
        ("base-only", split, "worker-base", ("base",)),
        ("the rest of the split", split, "worker-rest", rest),
    ):
        held = ", ".join(sorted(outcome["held"].get(name, set()))) or "nothing reported"
        print(f"{label:<24}{','.join(queues):<34}{outcome['rss'][name]:>7.0f} MB   {held}")
    saved = all_rss - base_rss
    verdict = "PASS" if saved >= not_held else "MISS"
    print(
        f"all-queue - base-only = {saved:.0f} MB; the weights the base-only worker does not hold = {not_held:.0f} MB"
        f"  ({verdict})"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
