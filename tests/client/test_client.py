"""imagen_queue_client against the real system: the API, the workers, Postgres, Redis and the store."""

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from PIL import Image

import imagen_queue_client as iq
from tests.client.conftest import CountingTransport, Receiver, new_key
from tests.servers import REPO, System, wait_until

# The cheapest job that still runs the text encoder and a real denoising stage: 64 px, two steps.
QUICK = {"resolution": 64, "stages": {"base": {"steps": 2}}}


def _png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_package_imports_nothing_of_the_server() -> None:
    heavy = ["api", "core", "db", "workers", "storage", "cli", "fastapi", "sqlalchemy", "torch", "pydantic", "celery"]
    code = (
        "import json, sys, imagen_queue_client;"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))"
    )
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert "httpx" in imported and not imported & set(heavy)


def test_generate_with_prefer_wait_then_download(api: iq.Client, transport: CountingTransport) -> None:
    job = api.generate("a corgi wearing a crown", seed=7, wait=60, metadata={"user": "u-1"}, **QUICK)
    assert job.status == "succeeded", job.error
    assert [s.name for s in job.stages][:2] == ["encode_text", "base_64"] and job.metadata == {"user": "u-1"}
    (image,) = job.images
    assert (image.width, image.height, image.seed) == (64, 64, 7)
    with Image.open(io.BytesIO(api.download(image))) as png:
        assert png.size == (64, 64)
    assert [m for m, p in transport.sent if p == "/v1/jobs"] == ["POST"], "one request: the server held it"


def test_wait_follows_the_event_stream_instead_of_polling(api: iq.Client, transport: CountingTransport) -> None:
    job = api.generate("a corgi", seed=1, **QUICK)
    seen: list[iq.Event] = []
    done = api.wait(job.id, timeout_s=120, on_event=seen.append)
    assert done.status == "succeeded" and done.images
    assert seen[-1].event == "done" and seen[-1].data == {"status": "succeeded"}
    reads = [p for m, p in transport.sent if m == "GET" and p == f"/v1/jobs/{job.id}"]
    streams = [p for m, p in transport.sent if p == f"/v1/jobs/{job.id}/events"]
    assert len(streams) == 1 and len(reads) == 2, transport.sent  # before the stream, and the result


def test_wait_polls_slowly_when_no_stream_can_be_opened(system: System) -> None:
    from api.long_requests import release_slot, take_slot
    from core.config import get_settings
    from db import tenants
    from db.session import session_scope

    key = new_key(f"client-{uuid.uuid4().hex[:8]}")
    with session_scope() as session:
        found = tenants.find_api_key(session, key=key)
        assert found is not None
        tenant_id = found.tenant_id
    # Every event stream the tenant may hold is taken (as by its other clients): opening one is a 429.
    limit = get_settings().max_streams_per_tenant
    slots = [take_slot("stream", tenant_id, limit=limit, ttl_s=120) for _ in range(limit)]
    transport = CountingTransport()
    try:
        # Its Retry-After (15 s) is longer than this client waits for a retry: wait falls back to polling.
        policy = iq.RetryPolicy(max_wait_s=1)
        with iq.Client(system.api_url, key, transport=transport, poll_interval_s=0.5, retry_policy=policy) as api:
            job = api.generate("a corgi", seed=2, **QUICK)
            assert api.wait(job.id, timeout_s=120).status == "succeeded"
    finally:
        for slot in slots:
            if slot is not None:
                release_slot(slot)
    assert transport.sent.count(("GET", f"/v1/jobs/{job.id}/events")) == 1
    assert transport.sent.count(("GET", f"/v1/jobs/{job.id}")) >= 2


def test_stream_resumes_after_the_last_event_seen(api: iq.Client) -> None:
    job = api.generate("a corgi", seed=3, **QUICK)
    api.wait(job.id, timeout_s=120)
    everything = list(api.stream(job.id))
    assert everything[-1].event == "done" and any(e.event == "progress" for e in everything)
    kept = everything[:3]
    rest = list(api.stream(job.id, last_event_id=kept[-1].id))
    assert [(e.event, e.data, e.id) for e in kept + rest] == [(e.event, e.data, e.id) for e in everything]


def test_cancel_then_retry_runs_the_job_to_the_end(api: iq.Client) -> None:
    job = api.generate("a corgi", seed=4, resolution=64, stages={"base": {"steps": 40}})
    canceled = api.wait(api.cancel(job.id).id, timeout_s=60)
    assert canceled.status == "canceled"
    again = api.retry(job.id)
    assert again.status == "queued"
    assert api.wait(job.id, timeout_s=120).status == "succeeded"
    with pytest.raises(iq.Conflict) as refused:
        api.retry(job.id)
    assert refused.value.status == 409 and refused.value.code == "conflict"


def test_list_walks_every_page_newest_first(api: iq.Client) -> None:
    ids = [api.cancel(api.generate(f"a corgi number {n}", resolution=64).id).id for n in range(5)]
    listed = list(api.list(page_size=2))
    assert [j.id for j in listed] == ids[::-1]
    first = api.list_page(limit=2)
    assert len(first.items) == 2 and first.next_cursor
    assert [j.id for j in api.list(status="canceled", kind="generate", page_size=3)] == ids[::-1]
    assert list(api.list(status="running")) == []


def test_search_finds_an_indexed_image(api: iq.Client) -> None:
    indexed = api.wait(api.index(_png((200, 30, 30)), text="a red tile", collection="tiles").id, timeout_s=120)
    assert indexed.status == "succeeded" and indexed.output and indexed.output.embedding_id
    (hit,) = api.search("a red tile", collection="tiles", k=5)
    assert hit.job_id == indexed.id and hit.text == "a red tile"
    assert api.search(image=_png((200, 30, 30)), collection="tiles", k=1)[0].job_id == indexed.id
    assert api.search("anything", collection="empty-one") == []


def test_errors_carry_status_code_field_and_request_id(system: System, api: iq.Client) -> None:
    with pytest.raises(iq.InvalidInput) as bad:
        api.generate("   ")
    assert (bad.value.status, bad.value.code, bad.value.field) == (422, "invalid_request", "input.prompt")
    with pytest.raises(iq.InvalidInput) as bad_steps:
        api.generate("a corgi", stages={"base": {"steps": 0}})
    assert bad_steps.value.field == "input.stages.base.steps"
    with pytest.raises(iq.NotFound) as missing:
        api.get(str(uuid.uuid4()))
    assert missing.value.status == 404 and missing.value.request_id
    with iq.Client(system.api_url, "iq_not-a-key") as stranger, pytest.raises(iq.Unauthorized) as refused:
        stranger.get(str(uuid.uuid4()))
    assert refused.value.status == 401
    nowhere = iq.Client("http://127.0.0.1:1", "iq_x", retry_policy=iq.RetryPolicy(backoff_s=0.01))
    with nowhere, pytest.raises(iq.ConnectionFailed) as down:
        nowhere.get(str(uuid.uuid4()))
    assert isinstance(down.value, iq.Unavailable) and down.value.status is None


def test_submit_retries_with_one_idempotency_key(api: iq.Client) -> None:
    first = api.generate("a corgi", seed=5, idempotency_key="same-key", **QUICK)
    again = api.generate("a corgi", seed=5, idempotency_key="same-key", **QUICK)
    assert again.id == first.id
    with pytest.raises(iq.Conflict):
        api.generate("another corgi", idempotency_key="same-key", **QUICK)
    api.wait(first.id, timeout_s=120)


def test_429_is_retried_after_retry_after(system: System, caplog: pytest.LogCaptureFixture) -> None:
    # 20 requests a minute: a burst of 20, then one more every 3 s. The interval is long enough that a
    # slow machine cannot earn the next request back between the raw 429 and the impatient client's.
    key = new_key(f"client-{uuid.uuid4().hex[:8]}", requests_per_minute=20)
    headers = {"Authorization": f"Bearer {key}"}
    statuses = []
    with httpx.Client(base_url=system.api_url, headers=headers) as raw:
        while not statuses or statuses[-1] != 429:
            assert len(statuses) < 100, "the rate limit never answered 429"
            response = raw.get("/v1/jobs", params={"limit": 1})
            statuses.append(response.status_code)
        retry_after = int(response.headers["retry-after"])
        assert response.json()["error"]["code"] == "rate_limited"
    assert 20 <= statuses.count(200) <= 21 and 1 <= retry_after <= 3

    with iq.Client(system.api_url, key, retry_policy=iq.RetryPolicy(max_retries=0)) as impatient:
        with pytest.raises(iq.RateLimited) as limited:
            impatient.list_page(limit=1)
        assert limited.value.status == 429 and 1 <= limited.value.retry_after_s <= retry_after

    caplog.set_level(logging.INFO, logger="imagen_queue_client")
    with iq.Client(system.api_url, key) as api:
        start = time.monotonic()
        for _ in range(3):
            api.list_page(limit=1)  # each may meet a 429 first; none fails
        waited = time.monotonic() - start
    delays = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"429 rate_limited; retrying in ([0-9.]+) s", r.getMessage()))
    ]
    assert delays, "the client met the limit"
    assert all(1 <= d <= 3 for d in delays), delays  # it waited what Retry-After said, no more
    assert waited >= sum(delays) * 0.95


def test_deliveries_and_verify_webhook_on_a_real_delivery(api: iq.Client, receiver: Receiver) -> None:
    secret = api.webhook_secret()
    job = api.generate("a corgi", seed=6, webhook=receiver.url, **QUICK)
    api.wait(job.id, timeout_s=120)
    requests = wait_until(
        lambda: [r for r in receiver.requests if b"job.succeeded" in r[1]] and receiver.requests,
        30,
        "the job.succeeded delivery",
    )
    events = [iq.verify_webhook(headers, body, secret) for headers, body in requests]
    assert {e.type for e in events} >= {"job.started", "job.succeeded"}
    final = next(e for e in events if e.type == "job.succeeded")
    assert final.job.id == job.id and final.job.status == "succeeded" and final.job.images

    headers, body = requests[-1]
    with pytest.raises(iq.WebhookVerificationError, match="no signature matches"):
        iq.verify_webhook(headers, body.replace(b"succeeded", b"failed"), secret)
    with pytest.raises(iq.WebhookVerificationError, match="no signature matches"):
        iq.verify_webhook(headers, body, "whsec_" + "A" * 32)
    with pytest.raises(iq.WebhookVerificationError, match="away from now"):
        iq.verify_webhook(headers, body, secret, tolerance_s=-1)

    deliveries = wait_until(
        lambda: (d := api.deliveries(job.id)) and all(x.status == "delivered" for x in d) and d, 30, "deliveries"
    )
    assert {d.webhook_id for d in deliveries} == {e.id for e in events}
    assert all(d.attempts and d.attempts[-1].status_code == 200 for d in deliveries)


def test_delete_refuses_an_unfinished_job_and_is_idempotent(api: iq.Client) -> None:
    job = api.generate("a corgi", seed=8, resolution=64, stages={"base": {"steps": 40}})
    try:
        with pytest.raises(iq.Conflict) as refused:
            api.delete(job.id)
    finally:
        api.wait(api.cancel(job.id).id, timeout_s=60)
    assert refused.value.status == 409 and refused.value.code == "conflict"
    deleted = api.delete(job.id)
    assert deleted.id == job.id and deleted.deleted_at is not None
    assert api.delete(job.id).deleted_at == deleted.deleted_at


def test_async_client_does_what_the_sync_one_does(system: System) -> None:
    key = new_key(f"client-{uuid.uuid4().hex[:8]}")

    async def scenario() -> None:
        async with iq.AsyncClient(system.api_url, key) as api:
            held = await api.generate("a corgi", seed=9, wait=60, **QUICK)
            assert held.status == "succeeded" and held.images[0].width == 64, held
            assert len(await api.download(held.images[0])) > 0
            job = await api.generate("a corgi", seed=10, **QUICK)
            seen: list[iq.Event] = []
            assert (await api.wait(job.id, timeout_s=120, on_event=seen.append)).status == "succeeded"
            assert seen[-1].event == "done"
            events = [e async for e in api.stream(job.id)]
            rest = [e async for e in api.stream(job.id, last_event_id=events[1].id)]
            assert rest == events[2:]
            assert [j.id async for j in api.list(page_size=1)] == [job.id, held.id]
            canceled = await api.cancel((await api.generate("a corgi", resolution=64)).id)
            assert (await api.wait(canceled.id, timeout_s=60)).status == "canceled"
            with pytest.raises(iq.InvalidInput) as bad:
                await api.generate("")
            assert bad.value.field == "input.prompt"
            with pytest.raises(iq.NotFound):
                await api.get(str(uuid.uuid4()))

    asyncio.run(scenario())
