"""Commands that call the HTTP API through imagen_queue_client: generate, caption, index, search, and jobs."""

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cli.output import JOB_FAILED, OK, print_json, print_table

_TIMEOUT_S = 600.0


def client_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--api-url, --api-key and --timeout, which every client command takes."""
    command = click.option(
        "--timeout", type=float, default=_TIMEOUT_S, show_default=True, help="seconds to wait for a job"
    )(command)
    command = click.option(
        "--api-key",
        default=None,
        help="default: IMAGEN_API_KEY, IMAGEN_ADMIN_API_KEY, else the embedded system's admin key",
    )(command)
    return click.option(
        "--api-url",
        default=None,
        help="default: IMAGEN_API_URL, IMAGEN_PUBLIC_URL, else the address `imagen-queue up` recorded",
    )(command)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")(command)


def _client(api_url: str | None, api_key: str | None) -> Any:
    from cli.connection import default_api_key, default_api_url
    from imagen_queue_client import Client

    key = default_api_key(api_key)
    if not key:
        raise click.UsageError("no API key: pass --api-key, set IMAGEN_API_KEY, or run `imagen-queue up` once")
    return Client(default_api_url(api_url), key)


def _pairs(values: tuple[str, ...], option: str, convert: Callable[[str], Any]) -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict, each value converted; a usage error naming the option otherwise."""
    found: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            found[key] = convert(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: {value!r} is not a {convert.__name__}", param_hint=option) from None
    return found


class _ProgressBars:
    """A rich progress bar per stage, on stderr, moved by the job's live events."""

    def __init__(self, job: Any) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self.progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[status]}"),
            console=Console(file=sys.stderr),
        )
        self.tasks = {
            s.name: self.progress.add_task(s.name, total=1.0, completed=s.progress, status=s.status) for s in job.stages
        }

    def __enter__(self) -> "_ProgressBars":
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def update(self, event: Any) -> None:
        data = event.data
        if event.event == "progress" and data.get("stage") in self.tasks:
            self.progress.update(self.tasks[data["stage"]], completed=float(data["progress"]))
        elif event.event == "stage" and data.get("name") in self.tasks:
            task = self.tasks[data["name"]]
            self.progress.update(task, status=data.get("status", ""))
            if data.get("status") == "succeeded":
                self.progress.update(task, completed=1.0)


def _follow(client: Any, job: Any, timeout_s: float, *, bars: bool) -> Any:
    """The job once it ended, with progress bars on stderr while it runs (if ``bars``)."""
    if job.done:
        return job
    if not bars:
        return client.wait(job.id, timeout_s)
    with _ProgressBars(job) as progress:
        return client.wait(job.id, timeout_s, on_event=progress.update)


def _ended(job: Any) -> int:
    if job.status != "succeeded":
        click.echo(f"job {job.id} {job.status}{': ' + job.error if job.error else ''}", err=True)
        return JOB_FAILED
    return OK


@click.command()
@click.argument("prompt")
@click.option("--negative-prompt", default=None)
@click.option("--num-images", type=int, default=1, show_default=True)
@click.option("--resolution", type=int, default=None, help="default: the preset's final resolution")
@click.option("--seed", type=int, default=None)
@click.option(
    "--steps", "steps", multiple=True, metavar="STAGE=N", help="denoising steps of a stage (base, sr256, ...)"
)
@click.option("--guidance", "guidance", multiple=True, metavar="STAGE=X", help="guidance scale of a stage")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0..9, 9 runs first (default 5)")
@click.option("--webhook", default=None, metavar="URL", help="POST the job's events (signed) to this URL")
@click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE", help="kept with the job")
@click.option("--out", default="out", show_default=True, help="folder for the images (one subfolder per job)")
@click.option("--caption", is_flag=True, help="also caption the final images")
@click.option("--index", is_flag=True, help="also add the final images to the search index")
@json_option
@client_options
def generate(
    prompt: str,
    negative_prompt: str | None,
    num_images: int,
    resolution: int | None,
    seed: int | None,
    steps: tuple[str, ...],
    guidance: tuple[str, ...],
    priority: int | None,
    webhook: str | None,
    metadata: tuple[str, ...],
    out: str,
    caption: bool,
    index: bool,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
    timeout: float,
) -> int:
    """Submit a generate job, follow it, and save every stage's images under OUT/<job id>/."""
    stages: dict[str, dict[str, Any]] = {}
    for key, value in _pairs(steps, "--steps", int).items():
        stages.setdefault(key, {})["steps"] = value
    for key, value in _pairs(guidance, "--guidance", float).items():
        stages.setdefault(key, {})["guidance_scale"] = value
    with _client(api_url, api_key) as client:
        job = client.generate(
            prompt,
            negative_prompt=negative_prompt,
            num_images=num_images,
            seed=seed,
            resolution=resolution,
            stages=stages or None,
            caption=caption or None,
            index=index or None,
            priority=priority,
            webhook=webhook,
            metadata=_pairs(metadata, "--metadata", str) or None,
        )
        click.echo(f"job {job.id} {job.status}", err=True)
        job = _follow(client, job, timeout, bars=not as_json)
        if as_json:
            print_json(job)
            return _ended(job)
        if _ended(job) != OK:
            return JOB_FAILED
        folder = Path(out) / job.id
        folder.mkdir(parents=True, exist_ok=True)
        for stage in job.stages:
            for output in stage.outputs:
                if not output.is_image:
                    continue  # the prompt embeddings, not an image
                path = folder / f"{stage.name}_{output.index}.png"
                client.download(output, path)
                click.echo(f"{path}  ({output.width}x{output.height}, seed {output.seed})")
        for image in job.images:
            if image.caption:
                click.echo(f"caption (seed {image.seed}): {image.caption}")
    return OK


@click.command(name="caption")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--max-new-tokens", type=int, default=30, show_default=True)
@click.option("--num-beams", type=int, default=1, show_default=True)
@json_option
@client_options
def caption_command(
    image: Path,
    max_new_tokens: int,
    num_beams: int,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
    timeout: float,
) -> int:
    """Caption an image file (a caption job)."""
    with _client(api_url, api_key) as client:
        job = client.caption(image, max_new_tokens=max_new_tokens, num_beams=num_beams, wait=min(timeout, 30))
        job = client.wait(job.id, timeout)
    if as_json:
        print_json(job)
    elif job.status == "succeeded" and job.output:
        click.echo(job.output.caption)
    return _ended(job)


@click.command(name="index")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--text", default=None, help="text to index with the image")
@click.option("--collection", default="default", show_default=True)
@json_option
@client_options
def index_command(
    image: Path,
    text: str | None,
    collection: str,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
    timeout: float,
) -> int:
    """Add an image file to the search index (an index job)."""
    with _client(api_url, api_key) as client:
        job = client.index(image, text=text, collection=collection, wait=min(timeout, 30))
        job = client.wait(job.id, timeout)
    if as_json:
        print_json(job)
    elif job.status == "succeeded" and job.output:
        click.echo(f"indexed {image} in {collection!r}: {job.output.embedding_id}")
    return _ended(job)


@click.command()
@click.argument("query")
@click.option("--image", is_flag=True, help="QUERY is the path of an image file")
@click.option("--collection", default="default", show_default=True)
@click.option("-k", type=int, default=10, show_default=True, help="how many results")
@json_option
@client_options
def search(
    query: str,
    image: bool,
    collection: str,
    k: int,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
    timeout: float,
) -> int:
    """Search the index by text (or, with --image, by an image file)."""
    with _client(api_url, api_key) as client:
        if image:
            hits = client.search(image=Path(query), collection=collection, k=k)
        else:
            hits = client.search(query, collection=collection, k=k)
    if as_json:
        print_json(hits)
        return OK
    for hit in hits:
        click.echo(f"{hit.score:.4f}  job {hit.job_id}  {hit.caption or hit.text or ''}\n        {hit.image_url}")
    return OK


@click.command()
@click.argument("job_id")
@client_options
def status(job_id: str, api_url: str | None, api_key: str | None, timeout: float) -> int:
    """Print a job as JSON (exit 1 if it failed)."""
    with _client(api_url, api_key) as client:
        job = client.get(job_id)
    print_json(job)
    return JOB_FAILED if job.status == "failed" else OK


@click.command()
@click.argument("job_id")
@json_option
@client_options
def watch(job_id: str, as_json: bool, api_url: str | None, api_key: str | None, timeout: float) -> int:
    """Follow a job's progress until it ends (exit 1 unless it succeeded)."""
    with _client(api_url, api_key) as client:
        job = _follow(client, client.get(job_id), timeout, bars=not as_json)
    if as_json:
        print_json(job)
    else:
        click.echo(f"job {job.id} {job.status}{': ' + job.error if job.error else ''}")
    return OK if job.status == "succeeded" else JOB_FAILED


def _cancel(job_id: str, as_json: bool, api_url: str | None, api_key: str | None) -> int:
    with _client(api_url, api_key) as client:
        job = client.cancel(job_id)
    if as_json:
        print_json(job)
    else:
        click.echo(f"job {job.id} {job.status}{' (stops at its next step)' if job.status == 'running' else ''}")
    return OK


@click.command(name="cancel")
@click.argument("job_id")
@json_option
@client_options
def cancel(job_id: str, as_json: bool, api_url: str | None, api_key: str | None, timeout: float) -> int:
    """Cancel a job."""
    return _cancel(job_id, as_json, api_url, api_key)


# -- imagen-queue jobs ... ------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """List, inspect, cancel, retry and delete jobs."""


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment is not None else "-"


def _job_row(job: Any) -> tuple[str, ...]:
    stages = " ".join(f"{s.name}:{s.status}" for s in job.stages)
    return (job.id, job.kind, job.status, str(job.priority), _when(job.created_at), stages)


@jobs.command(name="list")
@click.option("--status", "status_", default=None, help="queued, running, succeeded, failed or canceled")
@click.option("--kind", default=None, help="generate, caption or index")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="how many to show")
@click.option("--all", "show_all", is_flag=True, help="every job, page after page")
@json_option
@client_options
def jobs_list(
    status_: str | None,
    kind: str | None,
    limit: int,
    show_all: bool,
    as_json: bool,
    api_url: str | None,
    api_key: str | None,
    timeout: float,
) -> int:
    """The tenant's jobs, newest first."""
    import itertools

    with _client(api_url, api_key) as client:
        found = client.list(status=status_, kind=kind, page_size=min(limit, 100))
        listed = list(found if show_all else itertools.islice(found, limit))
    if as_json:
        print_json(listed)
    else:
        print_table(("ID", "KIND", "STATUS", "PRIORITY", "CREATED", "STAGES"), [_job_row(j) for j in listed])
    return OK


@jobs.command(name="get")
@click.argument("job_id")
@json_option
@client_options
def jobs_get(job_id: str, as_json: bool, api_url: str | None, api_key: str | None, timeout: float) -> int:
    """One job: its status, stages and output."""
    with _client(api_url, api_key) as client:
        job = client.get(job_id)
    if as_json:
        print_json(job)
        return OK
    click.echo(f"job {job.id}  {job.kind}  {job.status}  priority {job.priority}  preset {job.preset}")
    click.echo(f"created {_when(job.created_at)}  started {_when(job.started_at)}  finished {_when(job.finished_at)}")
    if job.error:
        click.echo(f"error: {job.error}")
    rows = [
        (
            s.name,
            s.status,
            f"{s.progress:.0%}",
            str(s.attempts),
            "-" if s.duration_ms is None else f"{s.duration_ms / 1000:.2f} s",
        )
        for s in job.stages
    ]
    print_table(("STAGE", "STATUS", "PROGRESS", "ATTEMPTS", "DURATION"), rows)
    for image in job.images:
        click.echo(f"image {image.width}x{image.height} seed {image.seed}: {image.url}")
    if job.output and job.output.caption:
        click.echo(f"caption: {job.output.caption}")
    return OK


@jobs.command(name="cancel")
@click.argument("job_id")
@json_option
@client_options
def jobs_cancel(job_id: str, as_json: bool, api_url: str | None, api_key: str | None, timeout: float) -> int:
    """Cancel a job (now, or as soon as its running stage notices)."""
    return _cancel(job_id, as_json, api_url, api_key)


@jobs.command(name="retry")
@click.argument("job_id")
@json_option
@client_options
def jobs_retry(job_id: str, as_json: bool, api_url: str | None, api_key: str | None, timeout: float) -> int:
    """Queue a failed or canceled job again from its first unfinished stage."""
    with _client(api_url, api_key) as client:
        job = client.retry(job_id)
    if as_json:
        print_json(job)
    else:
        click.echo(f"job {job.id} {job.status}")
    return OK


@jobs.command(name="delete")
@click.argument("job_id")
@json_option
@client_options
def jobs_delete(job_id: str, as_json: bool, api_url: str | None, api_key: str | None, timeout: float) -> int:
    """Delete an ended job and its images (a queued or running one: cancel it first)."""
    with _client(api_url, api_key) as client:
        job = client.delete(job_id)
    if as_json:
        print_json(job)
    else:
        click.echo(f"job {job.id} deleted at {_when(job.deleted_at)}")
    return OK


@jobs.command(name="deliveries")
@click.argument("job_id")
@json_option
@client_options
def jobs_deliveries(job_id: str, as_json: bool, api_url: str | None, api_key: str | None, timeout: float) -> int:
    """The job's webhook events, newest first, with their delivery attempts."""
    with _client(api_url, api_key) as client:
        found = client.deliveries(job_id)
    if as_json:
        print_json(found)
        return OK
    rows = [
        (
            d.webhook_id,
            d.type,
            str(d.sequence),
            d.status,
            str(len(d.attempts)),
            str(d.attempts[-1].status_code or d.attempts[-1].error or "-") if d.attempts else "-",
            _when(d.delivered_at),
        )
        for d in found
    ]
    print_table(("WEBHOOK ID", "TYPE", "SEQ", "STATUS", "ATTEMPTS", "LAST ANSWER", "DELIVERED"), rows)
    return OK


COMMANDS = [generate, caption_command, index_command, search, status, cancel, watch, jobs]
