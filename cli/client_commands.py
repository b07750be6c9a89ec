"""Commands that call the HTTP API: generate, caption, index, search, status, cancel, watch."""

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cli.client import ApiClient


def cmd_generate(args: argparse.Namespace) -> int:
    from cli.client import generate

    client = _client(args)
    body: dict[str, object] = {"kind": "generate", "input": {"prompt": args.prompt, "num_images": args.num_images}}
    if args.resolution is not None:
        body["input"]["resolution"] = args.resolution  # type: ignore[index]
    if args.seed is not None:
        body["input"]["seed"] = args.seed  # type: ignore[index]
    if args.negative_prompt:
        body["input"]["negative_prompt"] = args.negative_prompt  # type: ignore[index]
    if args.caption:
        body["input"]["caption"] = True  # type: ignore[index]
    if args.index:
        body["input"]["index"] = True  # type: ignore[index]
    return generate(client, body, Path(args.out), args.timeout)


def _client(args: argparse.Namespace) -> "ApiClient":
    from cli.client import ApiClient, resolve_api_key
    from core.config import get_settings

    settings = get_settings()
    return ApiClient(args.api_url or settings.public_url, resolve_api_key(settings, args.api_key))


def cmd_caption(args: argparse.Namespace) -> int:
    from cli.client import image_field, run_job

    body = {
        "kind": "caption",
        "input": {"image": image_field(args.image), "max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams},
    }
    job = run_job(_client(args), body, args.timeout)
    if job is None:
        return 1
    print(job["output"]["caption"])
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from cli.client import image_field, run_job

    body: dict[str, Any] = {"kind": "index", "input": {"image": image_field(args.image), "collection": args.collection}}
    if args.text:
        body["input"]["text"] = args.text
    job = run_job(_client(args), body, args.timeout)
    if job is None:
        return 1
    print(f"indexed {args.image} in {args.collection!r}: {job['output']['embedding_id']}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from cli.client import image_field

    body: dict[str, Any] = {"collection": args.collection, "k": args.k}
    if args.image:
        body["image"] = image_field(Path(args.query))
    else:
        body["text"] = args.query
    for hit in _client(args).search(body)["results"]:
        label = hit["caption"] or hit["text"] or ""
        print(f"{hit['score']:.4f}  job {hit['job_id']}  {label}\n        {hit['image_url']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import json

    job = _client(args).job(args.job_id)
    print(json.dumps(job, indent=2))
    return 0 if job["status"] != "failed" else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _client(args).cancel(args.job_id)
    print(f"job {job['id']} {job['status']}{' (stops at its next step)' if job['status'] == 'running' else ''}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    job = _client(args).watch(args.job_id, args.timeout)
    print(f"job {job['id']} {job['status']}{': ' + job['error'] if job.get('error') else ''}")
    return 0 if job["status"] == "succeeded" else 1
