"""`imagen-queue models fetch deepfloyd-if` and the worker's loader agree on what the preset's repositories hold.

Every repository of the preset is laid out in a Hugging Face cache as the hub publishes it (tests/workers/
hub_layout.py: `models--Org--Name/snapshots/<rev>/...`, `refs/main`, fp32 and fp16 weights, legacy `.bin`
files, a README), with tiny models of the same classes. huggingface_hub's own filter (the one
`snapshot_download` applies to `allow_patterns`) picks what the fetch would download; a cache holding only
that is then read, offline, by the worker's loader, part by part, and by a real worker running a job on
`IMAGEN_MODEL_PRESET=deepfloyd-if`. The real weights (tens of GB, gated) are never downloaded here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from huggingface_hub.utils import filter_repo_objects

from cli.models_fetch import RepoNeeds, allow_patterns, preset_repos
from core.presets import DEEPFLOYD_IF
from tests.conftest import Client
from tests.servers import REPO, System
from tests.workers import hub_layout


@dataclass
class Hub:
    """The laid-out repositories: each one's files, the fetch's patterns for it, and what they keep."""

    staged: dict[str, Path]
    needs: dict[str, RepoNeeds]
    files: dict[str, list[str]]
    patterns: dict[str, list[str]]
    kept: dict[str, set[str]]
    hf_home: Path  # a cache (HF_HOME/hub) holding the kept files only, as `models fetch` leaves it

    @property
    def cache(self) -> Path:
        return self.hf_home / "hub"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Hub:
    staged = hub_layout.build_repos(tmp_path_factory.mktemp("hub-repos"))
    needs = {repo.repo_id: repo for repo in preset_repos(DEEPFLOYD_IF)}
    assert set(needs) == set(staged), "the layout must hold every repository of the preset, and only those"
    hf_home = tmp_path_factory.mktemp("hf-home")
    files, patterns, kept = {}, {}, {}
    for repo_id, folder in staged.items():
        files[repo_id] = hub_layout.repo_files(folder)
        index_file = folder / "model_index.json"
        model_index = json.loads(index_file.read_text()) if needs[repo_id].pipeline else None
        patterns[repo_id] = allow_patterns(needs[repo_id], files[repo_id], model_index)
        kept[repo_id] = set(filter_repo_objects(files[repo_id], allow_patterns=patterns[repo_id]))
        hub_layout.lay_out(hf_home / "hub", repo_id, folder, sorted(kept[repo_id]))
    return Hub(staged, needs, files, patterns, kept, hf_home)


def test_the_fetch_keeps_one_set_of_weights_and_the_configs_of_the_loaded_components(hub: Hub) -> None:
    if_i, if_ii, x4 = (spec.source for spec in DEEPFLOYD_IF.stages)
    for repo_id, kept in hub.kept.items():
        # Every pattern names a file the repository has: none is silently dropped by the filter.
        assert kept == set(hub.patterns[repo_id]), repo_id
        assert not {name for name in kept if name.endswith(".bin") or name.endswith(".md")}, repo_id
    weights = {repo: sorted(n for n in kept if n.endswith(".safetensors")) for repo, kept in hub.kept.items()}
    # IF's stages in their fp16 variant, T5 in its fp16 shards with their index.
    assert weights[if_i] == [
        "safety_checker/model.fp16.safetensors",
        "text_encoder/model.fp16-00001-of-00002.safetensors",
        "text_encoder/model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "watermarker/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert "text_encoder/model.safetensors.index.fp16.json" in hub.kept[if_i]
    assert {"tokenizer/tokenizer.json", "scheduler/scheduler_config.json"} <= hub.kept[if_i]
    # Stage II takes stage I's prompt embeddings: its own text encoder and tokenizer stay on the hub.
    assert not {n for n in hub.kept[if_ii] if n.startswith(("text_encoder/", "tokenizer/"))}
    assert "image_noising_scheduler/scheduler_config.json" in hub.kept[if_ii]
    # The x4 upscaler has no fp16 variant in the preset: its fp32 weights, cast on load.
    assert weights[x4] == [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    assert weights[DEEPFLOYD_IF.captioner.source] == weights[DEEPFLOYD_IF.embedder.source] == ["model.safetensors"]


# Loads every part of the preset on its own (as a worker serving one queue does) from the cache, as on a GPU
# (fp16 and the fp16 variant, here on the CPU), then the captioner and the embedder.
_LOAD_EVERY_PART = """
import sys
from pathlib import Path

import torch

from core.presets import DEEPFLOYD_IF
from workers.pipelines import load_part, part_names
from workers.vision_models import load_captioner, load_embedder

models_dir = Path(sys.argv[1])
for name in part_names(DEEPFLOYD_IF):
    part = load_part(DEEPFLOYD_IF, name, models_dir, "cpu", torch.float16)
    print(name, type(part.pipeline).__name__, flush=True)
print("captioner", type(load_captioner(DEEPFLOYD_IF, models_dir).model).__name__, flush=True)
print("embedder", type(load_embedder(DEEPFLOYD_IF, models_dir).model).__name__, flush=True)
"""


def test_the_loader_opens_exactly_the_fetched_files_offline(hub: Hub, tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_text("x")
    _mark_unread(probe)
    probe.read_text()
    if not _was_read(probe):
        pytest.skip(
            f"the file system of {tmp_path} does not record reads (noatime): which files were opened is unknown"
        )
    blobs: dict[Path, set[tuple[str, str]]] = {}
    for repo_id, kept in hub.kept.items():
        snapshot = hub_layout.cache_folder(hub.cache, repo_id) / "snapshots" / hub_layout.REVISION
        for name in kept:
            blobs.setdefault((snapshot / name).resolve(), set()).add((repo_id, name))
    for blob in blobs:
        _mark_unread(blob)

    env = {**os.environ, "HF_HOME": str(hub.hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_EVERY_PART, str(tmp_path / "no-mirrors")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert loaded == {
        "text_encoder": "IFPipeline",
        "base_64": "IFPipeline",
        "sr_256": "IFSuperResolutionPipeline",
        "sr_1024": "UpscalePipeline",  # diffusers' x4 upscaler, able to run IF's safety checker
        "captioner": "GitForCausalLM",
        "embedder": "CLIPModel",
    }
    # Files of the same content share a blob: a blob read counts for each of its names.
    unread = sorted(name for blob, names in blobs.items() if not _was_read(blob) for name in names)
    assert unread == [], "fetched, but the loader never opens them"


def test_a_job_runs_through_a_real_worker_on_the_fetched_cache(hub: Hub) -> None:
    admin_key = f"iq_test_{uuid.uuid4().hex}"
    env = {
        "HF_HOME": str(hub.hf_home),
        "IMAGEN_ADMIN_API_KEY": admin_key,
        "IMAGEN_SECRET_KEY": uuid.uuid4().hex,
        "IMAGEN_REQUIRE_SECRET_KEY": "true",
    }
    system = System(preset="deepfloyd-if", env_overrides=env)
    try:
        system.start_stores()
        # As the compose file's one-shot `migrate` does on every start: the admin key is registered once.
        assert "admin API key registered" in _cli(system, "migrate")
        assert "admin API key already registered" in _cli(system, "migrate")
        assert "deepfloyd-if  [active]  available" in _cli(system, "models", "list")
        system.start_processes()
        client = Client(system, admin_key)
        try:
            job = _run_job(client)
        finally:
            client.http.close()
    finally:
        system.stop()
    assert job["status"] == "succeeded", job
    sizes = {(stage["name"], stage["status"]) for stage in job["stages"]}
    assert {("base_64", "succeeded"), ("sr_256", "succeeded"), ("sr_1024", "succeeded")} <= sizes
    (image,) = job["output"]["images"]
    assert (image["width"], image["height"]) == (1024, 1024)
    assert image["caption"] is not None


def _run_job(client: Client) -> dict[str, object]:
    stages = {"base": {"steps": 3}, "sr256": {"steps": 2}, "sr1024": {"steps": 2}}
    created = client.submit("a corgi wearing a crown", seed=3, stages=stages, caption=True, index=True)
    job = client.wait(created["id"], timeout_s=300)
    assert job["status"] == "succeeded", (job, client.system.worker.log_tail(60) if client.system.worker else "")
    response = httpx.get(job["output"]["images"][0]["url"], timeout=30)
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
    return job


def _cli(system: System, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", *args], env=system.env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _mark_unread(path: Path) -> None:
    # With relatime (Linux's default) a read moves the access time when it is not after the modification time.
    stat = path.stat()
    os.utime(path, (stat.st_mtime - 1000, stat.st_mtime))


def _was_read(path: Path) -> bool:
    stat = path.stat()
    return stat.st_atime > stat.st_mtime


@pytest.fixture(autouse=True)
def _no_stray_cache_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The system's processes inherit this process's environment: the cache must be the laid-out one only.
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    yield
