"""Admin commands that work on the database directly: keys create/list/revoke, tenants list/set-quota.

With no ``IMAGEN_DATABASE_URL`` they find the embedded system from ``IMAGEN_DATA_DIR`` (cli.connection).
"""

import sys
from datetime import UTC
from typing import TYPE_CHECKING, Any

import click

from cli.output import JOB_FAILED, OK, USAGE, print_json, print_table

if TYPE_CHECKING:
    from datetime import datetime


def _database() -> None:
    from cli.connection import use_embedded_database

    use_embedded_database()


@click.group()
def keys() -> None:
    """API keys."""


@keys.command(name="create")
@click.option("--tenant", required=True)
@click.option("--admin", is_flag=True)
def keys_create(tenant: str, admin: bool) -> int:
    """Create a key (printed once; only its hash is stored)."""
    _database()
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        row = tenants.get_or_create_tenant(session, name=tenant)
        _, key = tenants.create_api_key(session, tenant=row, is_admin=admin)
    print(key)
    return OK


@keys.command(name="list")
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def keys_list(tenant: str | None, as_json: bool) -> int:
    """List keys (their prefixes; a key itself is never stored)."""
    _database()
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        found: list[dict[str, Any]] = [
            {
                "prefix": key.prefix,
                "tenant": key.tenant.name,
                "admin": key.is_admin,
                "created_at": _iso(key.created_at),
                "revoked_at": _iso(key.revoked_at),
            }
            for key in tenants.list_api_keys(session, tenant_name=tenant)
        ]
    if as_json:
        print_json(found)
        return OK
    rows = [
        (k["prefix"], k["tenant"], "yes" if k["admin"] else "no", _shown(k["created_at"]), _shown(k["revoked_at"]))
        for k in found
    ]
    print_table(("PREFIX", "TENANT", "ADMIN", "CREATED", "REVOKED"), rows)
    return OK


@keys.command(name="revoke")
@click.argument("key", metavar="KEY_OR_PREFIX")
def keys_revoke(key: str) -> int:
    """Revoke a key (the key, or its prefix as 'keys list' shows it): it fails authentication from now on."""
    _database()
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        found = tenants.find_live_api_keys(session, key_or_prefix=key)
        if len(found) != 1:
            problem = "no live key matches" if not found else f"{len(found)} live keys match"
            print(f"{problem} {key!r}; give a prefix from 'keys list', or the whole key", file=sys.stderr)
            return JOB_FAILED
        tenants.revoke_api_key(session, key=found[0])
        print(f"revoked {found[0].prefix} (tenant {found[0].tenant.name})")
    return OK


@click.group()
def tenants() -> None:
    """Tenants and their quotas."""


@tenants.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
def tenants_list(as_json: bool) -> int:
    """List tenants, their limits and jobs in flight."""
    _database()
    from core.config import get_settings
    from db import tenants as tenant_queries
    from db.session import session_scope

    settings = get_settings()
    with session_scope() as session:
        found: list[dict[str, Any]] = [
            {
                "name": tenant.name,
                "created_at": _iso(tenant.created_at),
                "requests_per_minute": tenant.requests_per_minute,
                "max_jobs_in_flight": tenant.max_jobs_in_flight,
                "max_priority": tenant.max_priority,
                "jobs_in_flight": in_flight,
            }
            for tenant, in_flight in tenant_queries.list_tenants(session)
        ]
    if as_json:
        # null: the deployment's default (IMAGEN_DEFAULT_*), given beside; <= 0: unlimited.
        defaults = {
            "requests_per_minute": settings.default_requests_per_minute,
            "max_jobs_in_flight": settings.default_max_jobs_in_flight,
            "max_priority": settings.default_max_priority,
        }
        print_json({"defaults": defaults, "tenants": found})
        return OK
    rows = [
        (
            t["name"],
            _shown(t["created_at"]),
            _limit(t["requests_per_minute"], settings.default_requests_per_minute),
            _limit(t["max_jobs_in_flight"], settings.default_max_jobs_in_flight),
            _ceiling(t["max_priority"], settings.default_max_priority),
            str(t["jobs_in_flight"]),
        )
        for t in found
    ]
    print_table(("TENANT", "CREATED", "REQUESTS/MIN", "MAX IN FLIGHT", "MAX PRIORITY", "IN FLIGHT"), rows)
    return OK


class _Setting:
    """A limit given on the command line: a value, or None for the deployment's default."""

    def __init__(self, value: int | None) -> None:
        self.value = value


class _QuotaType(click.ParamType):
    """A quota: a whole number (<= 0: unlimited) or 'default'."""

    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> _Setting:
        if isinstance(value, _Setting):
            return value
        if value == "default":
            return _Setting(None)
        from core.limits import parse_quota

        try:
            int(value)
        except ValueError:
            self.fail(f"a whole number or 'default', got {value!r}", param, ctx)
        try:
            return _Setting(parse_quota(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _CeilingType(click.ParamType):
    """A priority ceiling: 0..9 or 'default'."""

    name = "P"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> _Setting:
        if isinstance(value, _Setting):
            return value
        if value == "default":
            return _Setting(None)
        from core.limits import parse_priority_ceiling

        try:
            return _Setting(parse_priority_ceiling(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@tenants.command(name="set-quota")
@click.argument("name")
@click.option("--requests-per-minute", type=_QuotaType(), default=None)
@click.option("--max-jobs-in-flight", type=_QuotaType(), default=None)
@click.option(
    "--max-priority",
    type=_CeilingType(),
    default=None,
    help="the highest job priority (0..9) the tenant may use, or 'default' for IMAGEN_DEFAULT_MAX_PRIORITY",
)
def tenants_set_quota(
    name: str,
    requests_per_minute: _Setting | None,
    max_jobs_in_flight: _Setting | None,
    max_priority: _Setting | None,
) -> int:
    """Set a tenant's limits: a number, 0 for unlimited, or 'default' for IMAGEN_DEFAULT_*."""
    if requests_per_minute is None and max_jobs_in_flight is None and max_priority is None:
        print("nothing to set: give --requests-per-minute, --max-jobs-in-flight and/or --max-priority", file=sys.stderr)
        return USAGE
    _database()
    from db import tenants as tenant_queries
    from db.session import session_scope

    def given(option: _Setting | None) -> Any:
        # An option left out leaves that limit as it is.
        return tenant_queries.UNSET if option is None else option.value

    with session_scope() as session:
        tenant = tenant_queries.get_tenant(session, name=name)
        if tenant is None:
            print(f"no tenant {name!r}", file=sys.stderr)
            return JOB_FAILED
        tenant_queries.set_quota(
            session,
            tenant=tenant,
            requests_per_minute=given(requests_per_minute),
            max_jobs_in_flight=given(max_jobs_in_flight),
            max_priority=given(max_priority),
        )
        now_rpm, now_in_flight, now_ceiling = tenant.requests_per_minute, tenant.max_jobs_in_flight, tenant.max_priority
    print(
        f"tenant {name}: requests_per_minute {_raw_limit(now_rpm)},"
        f" max_jobs_in_flight {_raw_limit(now_in_flight)},"
        f" max_priority {'default' if now_ceiling is None else now_ceiling}"
    )
    return OK


def _iso(moment: "datetime | None") -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def _shown(iso: str | None) -> str:
    from datetime import datetime

    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%SZ") if iso else "-"


def _ceiling(own: int | None, default: int) -> str:
    return f"{default} (default)" if own is None else str(own)


def _raw_limit(value: int | None) -> str:
    return "default" if value is None else "unlimited" if value <= 0 else str(value)


def _limit(own: int | None, default: int) -> str:
    value = default if own is None else own
    shown = "unlimited" if value <= 0 else str(value)
    return f"{shown} (default)" if own is None else shown


COMMANDS = [keys, tenants]
