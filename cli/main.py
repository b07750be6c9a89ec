"""``imagen-queue``: run the embedded system, its parts, and a client."""

import sys

import click

from cli.admin_commands import COMMANDS as ADMIN_COMMANDS
from cli.client_commands import COMMANDS as CLIENT_COMMANDS
from cli.model_commands import COMMANDS as MODEL_COMMANDS
from cli.output import EXIT_CODES_HELP, JOB_FAILED, UNAVAILABLE, USAGE, error
from cli.system_commands import COMMANDS as SYSTEM_COMMANDS
from core.logs import configure_logging


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagen-queue")
    except PackageNotFoundError:
        return "unknown"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
    epilog=EXIT_CODES_HELP,
)
@click.version_option(_version(), prog_name="imagen-queue", message="%(prog)s %(version)s")
def cli() -> None:
    """imagen-queue: run the embedded system, its parts, and a client of its HTTP API."""


for _command in (*SYSTEM_COMMANDS, *MODEL_COMMANDS, *CLIENT_COMMANDS, *ADMIN_COMMANDS):
    cli.add_command(_command)


def _exit_code_of(exc: Exception) -> int | None:
    """The exit code of an error that is the service's or the request's, not a bug; None for a bug."""
    from cli.connection import SystemNotFound
    from imagen_queue_client import ApiError, WaitTimeout

    if isinstance(exc, ApiError):
        error(f"error: {exc}" + (f" (request id {exc.request_id})" if exc.request_id else ""))
        return UNAVAILABLE if exc.status is None or exc.status >= 500 else USAGE
    if isinstance(exc, WaitTimeout):
        error(f"error: {exc} (it is still {exc.job.status})")
        return UNAVAILABLE
    if isinstance(exc, SystemNotFound):
        error(f"error: {exc}")
        return UNAVAILABLE
    if type(exc).__module__.startswith("sqlalchemy") and type(exc).__name__ in ("OperationalError", "InterfaceError"):
        error(f"error: the database is unreachable: {str(exc).splitlines()[0]}")
        return UNAVAILABLE
    return None


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    try:
        result = cli.main(args=argv, prog_name="imagen-queue", standalone_mode=False)
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as exc:
        exc.show()
        return USAGE if isinstance(exc, click.UsageError) else exc.exit_code or JOB_FAILED
    except click.Abort:
        error("aborted")
        return 130
    except Exception as exc:
        code = _exit_code_of(exc)
        if code is None:
            raise
        return code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
