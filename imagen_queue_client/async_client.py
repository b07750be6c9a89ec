"""The asynchronous client of the imagen-queue HTTP API: the same calls as ``Client``, awaited."""

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from imagen_queue_client import _requests as r
from imagen_queue_client.errors import ApiError, ConnectionFailed, RateLimited, Unavailable, WaitTimeout
from imagen_queue_client.models import Delivery, Event, Image, Job, JobPage, SearchResult, StageOutput


class AsyncClient:
    """An async client of one API with one key: ``AsyncClient("http://127.0.0.1:8000", "iq_...")``.

    Both default to ``IMAGEN_API_URL`` and ``IMAGEN_API_KEY``. Use it with ``async with``, or ``await aclose()``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        retry_policy: r.RetryPolicy | None = None,
        poll_interval_s: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = r.resolve_base_url(base_url)
        self.retry_policy = retry_policy or r.RetryPolicy()
        self.poll_interval_s = poll_interval_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout_s,
            transport=transport,
            headers={"Authorization": f"Bearer {r.resolve_api_key(api_key)}", "User-Agent": r.USER_AGENT},
        )
        # Presigned image URLs carry their own signature: the API key never goes to the object store.
        self._downloads = httpx.AsyncClient(timeout=max(timeout_s, 60.0), headers={"User-Agent": r.USER_AGENT})

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._downloads.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: "type[BaseException] | BaseException | TracebackType | None") -> None:
        await self.aclose()

    # -- sending, with retries ------------------------------------------------------------------------

    async def _response(
        self,
        call: r.Call,
        *,
        http: httpx.AsyncClient | None = None,
        stream: bool = False,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        """The response to ``call`` (below 400), retried as the policy allows; else the error it ended in."""
        http = http or self._http
        chosen: Any = timeout or (call.timeout_s if call.timeout_s is not None else httpx.USE_CLIENT_DEFAULT)
        attempt, waited = 0, 0.0
        while True:
            request = http.build_request(
                call.method, call.path, json=call.json, params=call.params, headers=call.headers, timeout=chosen
            )
            try:
                response = await http.send(request, stream=stream)
            except httpx.TransportError as exc:
                delay = self.retry_policy.after_transport_error(exc, call, attempt=attempt, waited_s=waited)
                if delay is None:
                    raise ConnectionFailed(r.describe(exc, call), code="connection_failed") from exc
                reason = type(exc).__name__
            else:
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                error = r.error_of(response)
                delay = self.retry_policy.after_error(error, call, attempt=attempt, waited_s=waited)
                if delay is None:
                    raise error
                reason = f"{error.status} {error.code}"
            r.log.info("%s %s: %s; retrying in %.1f s", call.method, call.path, reason, delay)
            await asyncio.sleep(delay)
            attempt, waited = attempt + 1, waited + delay

    async def _send(self, call: r.Call) -> Any:
        return (await self._response(call)).json()

    # -- jobs -------------------------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        input: Mapping[str, Any],
        *,
        webhook: str | Mapping[str, Any] | None = None,
        priority: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job (``generate``, ``caption`` or ``index``); with ``wait=N`` the server holds the answer
        up to N seconds and returns the job ended if it ended by then."""
        call = r.submit_call(
            kind,
            input,
            webhook=webhook,
            priority=priority,
            metadata=metadata,
            wait_s=wait,
            idempotency_key=idempotency_key,
        )
        return Job.from_dict(await self._send(call))

    async def generate(self, prompt: str, *, wait: float | None = None, **options: Any) -> Job:
        """Submit a generate job. ``options``: negative_prompt, num_images, seed, resolution, stages, caption,
        index (the input), and webhook, priority, metadata, idempotency_key."""
        job_options = {
            k: options.pop(k) for k in ("webhook", "priority", "metadata", "idempotency_key") if k in options
        }
        return await self.submit("generate", r.generate_input(prompt, **options), wait=wait, **job_options)

    async def caption(
        self, image: Any, *, max_new_tokens: int | None = None, num_beams: int | None = None, **job: Any
    ) -> Job:
        """Submit a caption job for an image (bytes, a path, an http(s) URL or an IMAGE dict)."""
        body = {"image": r.image_input(image), "max_new_tokens": max_new_tokens, "num_beams": num_beams}
        return await self.submit("caption", {k: v for k, v in body.items() if v is not None}, **job)

    async def index(self, image: Any, *, text: str | None = None, collection: str | None = None, **job: Any) -> Job:
        """Submit an index job: add an image (and a text) to the tenant's search index."""
        body = {"image": r.image_input(image), "text": text, "collection": collection}
        return await self.submit("index", {k: v for k, v in body.items() if v is not None}, **job)

    async def get(self, job_id: str) -> Job:
        """The job as it is now; NotFound if this tenant has no such job."""
        return Job.from_dict(await self._send(r.Call("GET", f"/v1/jobs/{job_id}")))

    async def cancel(self, job_id: str) -> Job:
        """Cancel the job (now, or as soon as its running stage notices)."""
        return Job.from_dict(await self._send(r.Call("POST", f"/v1/jobs/{job_id}/cancel")))

    async def retry(self, job_id: str) -> Job:
        """Queue a failed or canceled job again from its first unfinished stage."""
        return Job.from_dict(await self._send(r.Call("POST", f"/v1/jobs/{job_id}/retry", idempotent=False)))

    async def delete(self, job_id: str) -> Job:
        """Delete an ended job and its images (idempotent); Conflict while it is queued or running."""
        return Job.from_dict(await self._send(r.Call("DELETE", f"/v1/jobs/{job_id}")))

    async def list_page(
        self, *, status: str | None = None, kind: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobPage:
        """One page of the tenant's jobs, newest first."""
        return JobPage.from_dict(await self._send(r.list_call(status=status, kind=kind, limit=limit, cursor=cursor)))

    async def list(
        self, *, status: str | None = None, kind: str | None = None, page_size: int = 50
    ) -> AsyncIterator[Job]:
        """Every job of the tenant (filtered by status and kind), newest first, fetching page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_page(status=status, kind=kind, limit=page_size, cursor=cursor)
            for job in page.items:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def deliveries(self, job_id: str) -> builtins.list[Delivery]:
        """The job's webhook events, newest first, each with every delivery attempt."""
        data = await self._send(r.Call("GET", f"/v1/jobs/{job_id}/deliveries"))
        return [Delivery.from_dict(d) for d in data["items"]]

    async def redeliver(self, job_id: str, delivery_id: str) -> Delivery:
        """Deliver a webhook event again, on a fresh retry schedule."""
        call = r.Call("POST", f"/v1/jobs/{job_id}/deliveries/{delivery_id}/redeliver", idempotent=False)
        return Delivery.from_dict(await self._send(call))

    async def webhook_secret(self) -> str:
        """The tenant's ``whsec_...`` secret, to verify deliveries with ``verify_webhook``."""
        return str((await self._send(r.Call("GET", "/v1/webhooks/secret")))["secret"])

    # -- search and images ------------------------------------------------------------------------------

    async def search(
        self,
        text: str | None = None,
        *,
        image: Any = None,
        collection: str | None = None,
        k: int | None = None,
    ) -> builtins.list[SearchResult]:
        """The indexed images nearest to a text or an image, best first."""
        data = await self._send(r.search_call(text=text, image=image, collection=collection, k=k))
        return [SearchResult.from_dict(hit) for hit in data["results"]]

    async def download(
        self, image: "Image | StageOutput | SearchResult | str", path: str | Path | None = None
    ) -> bytes:
        """The bytes of an image (an Image, a stage output, a search hit, or its URL); also written to ``path``."""
        url = image if isinstance(image, str) else getattr(image, "url", None) or getattr(image, "image_url", None)
        if not url:
            raise ValueError("this output has no image URL")
        response = await self._response(r.Call("GET", url), http=self._downloads)
        if path is not None:
            Path(path).write_bytes(response.content)
        return response.content

    # -- live progress ----------------------------------------------------------------------------------

    async def _open_stream(self, job_id: str, last_event_id: str | None, read_timeout_s: float) -> httpx.Response:
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout_s)
        call = r.Call("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout_s=None)
        return await self._response(call, stream=True, timeout=timeout)

    async def stream(
        self,
        job_id: str,
        *,
        last_event_id: str | None = None,
        max_reconnects: int = 5,
        _deadline: float | None = None,
    ) -> AsyncIterator[Event]:
        """The job's live events until ``done``. A stream that breaks is opened again after the last event
        seen (``Last-Event-ID``), so no event is lost or repeated; pass ``last_event_id`` to resume a stream
        read earlier."""
        reconnects = 0
        while True:
            read_timeout = r.STREAM_READ_TIMEOUT_S
            if _deadline is not None:
                read_timeout = max(0.5, min(read_timeout, _deadline - time.monotonic()))
            response = await self._open_stream(job_id, last_event_id, read_timeout)
            decoder = r.SSEDecoder()
            try:
                async for line in response.aiter_lines():
                    if _deadline is not None and time.monotonic() > _deadline:
                        raise r.DeadlinePassed
                    event = decoder.feed(line)
                    if event is None:
                        continue
                    if (error := r.stream_error(event)) is not None:
                        raise error
                    reconnects = 0
                    if event.id:
                        last_event_id = event.id
                    yield event
                    if event.event == "done":
                        return
            except httpx.TransportError as exc:
                if _deadline is not None and time.monotonic() > _deadline:
                    raise r.DeadlinePassed from exc
                r.log.info("event stream of job %s broke (%s); resuming after %s", job_id, exc, last_event_id)
            finally:
                await response.aclose()
            reconnects += 1
            if reconnects > max_reconnects:
                raise ConnectionFailed(f"the event stream of job {job_id} broke {reconnects} times", code="stream_lost")
            await asyncio.sleep(min(0.25 * 2**reconnects, 4.0))

    async def wait(
        self, job_id: str, timeout_s: float = 600.0, *, on_event: Callable[[Event], object] | None = None
    ) -> Job:
        """The job once it ended (succeeded, failed or canceled); WaitTimeout after ``timeout_s``.

        Follows the job's event stream, which wakes as soon as it ends; only if the stream cannot be
        opened (the tenant's streams are all taken, say) does it poll, every ``poll_interval_s``.
        """
        deadline = time.monotonic() + timeout_s
        job = await self.get(job_id)
        if job.done:
            return job
        try:
            async for event in self.stream(job_id, _deadline=deadline):
                if on_event is not None:
                    on_event(event)
        except r.DeadlinePassed:
            raise WaitTimeout(f"job {job_id} did not end within {timeout_s:g} s", await self.get(job_id)) from None
        except ApiError as exc:
            if not isinstance(exc, RateLimited | Unavailable):  # a refusal that polling would meet too
                raise
            r.log.info("no event stream for job %s (%s); polling every %g s", job_id, exc, self.poll_interval_s)
        while True:
            job = await self.get(job_id)
            if job.done:
                return job
            if time.monotonic() + self.poll_interval_s > deadline:
                raise WaitTimeout(f"job {job_id} did not end within {timeout_s:g} s", job)
            await asyncio.sleep(self.poll_interval_s)
