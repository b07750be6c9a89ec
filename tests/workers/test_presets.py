"""Presets are data: each stage's kind decides its Celery task and queue, and a preset that breaks the
cascade's rules is refused when it is defined."""

import uuid
from dataclasses import replace
from types import ModuleType

import pytest

from core.presets import PRESETS, Preset, StageSpec, get_preset
from core.routing import generate_stages, stage_task
from tests.servers import System


@pytest.fixture(scope="module")
def dispatch(system: System) -> ModuleType:
    """workers.dispatch, imported once the system's settings are in this process's environment (it imports
    workers.celery_app, which reads them once)."""
    from workers import dispatch

    return dispatch


def test_toy_is_a_two_stage_cascade() -> None:
    toy = get_preset("toy")
    assert [(s.name, s.resolution, s.kind, s.source) for s in toy.stages] == [
        ("base_32", 32, "if", "toy/stage_1"),
        ("sr_128", 128, "if_sr", "toy/stage_2"),
    ]
    assert toy.base_stage.name == "base_32" and toy.final_resolution == 128
    assert toy.local and toy.fp16_on_cuda and toy.build_command == "imagen-queue models build-toy"
    assert (toy.captioner.source, toy.embedder.source, toy.embedder.model_id) == (
        "toy/caption",
        "toy/embed",
        "toy-clip-1",
    )


def test_stage_kinds_decide_tasks_and_queues() -> None:
    assert generate_stages(get_preset("toy"), 128, caption=True, index=True) == [
        ("encode_text", "text"),
        ("base_32", "base"),
        ("sr_128", "sr"),
        ("caption", "caption"),
        ("embed", "embed"),
    ]
    for preset in PRESETS.values():
        assert stage_task(preset, preset.base_stage.name) == ("imagen.base", "base")
        for spec in preset.stages[1:]:
            assert stage_task(preset, spec.name) == ("imagen.sr", "sr")


def test_each_stage_is_sent_to_its_task_and_queue_and_none_finalizes(dispatch: ModuleType) -> None:
    job_id = uuid.uuid4()
    signatures = [
        dispatch.stage_signature(job_id, stage, preset="toy", seq=3, priority=7)
        for stage in ("encode_text", "base_32", "sr_128", None)
    ]
    assert [(s.task, s.options["queue"], s.args) for s in signatures] == [
        ("imagen.encode_text", "text", (str(job_id), "encode_text", 3)),
        ("imagen.base", "base", (str(job_id), "base_32", 3)),
        ("imagen.sr", "sr", (str(job_id), "sr_128", 3)),
        ("imagen.finalize", "control", (str(job_id), "finalize", 3)),
    ]
    # The API's priority 9 runs first; Redis serves 0 first.
    assert {s.options["priority"] for s in signatures} == {2}


def test_a_stage_of_another_preset_has_no_task() -> None:
    with pytest.raises(ValueError, match="sr_256"):
        stage_task(get_preset("toy"), "sr_256")


def _sr(name: str, resolution: int, **changes: object) -> StageSpec:
    spec = StageSpec(name, resolution, "x", "if_sr", 5, 4.0, default_noise_level=100, max_noise_level=400)
    return replace(spec, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stages", "problem"),
    [
        ((), "no stages"),
        ((_sr("sr_64", 64),), "first stage"),
        ((StageSpec("base", 64, "x", "if", 5, 4.0), StageSpec("again", 128, "x", "if", 5, 4.0)), "first stage"),
        ((StageSpec("base", 64, "x", "if", 5, 4.0), _sr("sr_32", 32)), "increase"),
        ((StageSpec("base", 64, "x", "if", 5, 4.0, default_noise_level=10, max_noise_level=20),), "no noise level"),
        ((StageSpec("base", 64, "x", "if", 5, 4.0), _sr("sr_256", 256, max_noise_level=None)), "maximum noise"),
        ((StageSpec("base", 64, "x", "if", 5, 4.0), _sr("base", 256)), "distinct"),
        ((StageSpec("base", 64, "x", "paint", 5, 4.0),), "kinds"),  # type: ignore[arg-type]
    ],
)
def test_a_preset_that_breaks_the_cascade_is_refused(stages: tuple[StageSpec, ...], problem: str) -> None:
    toy = get_preset("toy")
    with pytest.raises(ValueError, match=problem):
        Preset("bad", stages, False, True, captioner=toy.captioner, embedder=toy.embedder)
