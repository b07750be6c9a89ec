"""Admin commands that work on the database directly: keys create/list/revoke, tenants list/set-quota."""

import argparse
import sys
from datetime import UTC
from typing import TYPE_CHECKING

from cli.tables import print_table

if TYPE_CHECKING:
    from datetime import datetime


def cmd_keys_create(args: argparse.Namespace) -> int:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        tenant = tenants.get_or_create_tenant(session, name=args.tenant)
        _, key = tenants.create_api_key(session, tenant=tenant, is_admin=args.admin)
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        rows = [
            (key.prefix, key.tenant.name, "yes" if key.is_admin else "no", _when(key.created_at), _when(key.revoked_at))
            for key in tenants.list_api_keys(session, tenant_name=args.tenant)
        ]
    print_table(("PREFIX", "TENANT", "ADMIN", "CREATED", "REVOKED"), rows)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        found = tenants.find_live_api_keys(session, key_or_prefix=args.key)
        if len(found) != 1:
            problem = "no live key matches" if not found else f"{len(found)} live keys match"
            print(f"{problem} {args.key!r}; give a prefix from 'keys list', or the whole key", file=sys.stderr)
            return 1
        tenants.revoke_api_key(session, key=found[0])
        print(f"revoked {found[0].prefix} (tenant {found[0].tenant.name})")
    return 0


def cmd_tenants_list(_: argparse.Namespace) -> int:
    from core.config import get_settings
    from db import tenants
    from db.session import session_scope

    settings = get_settings()
    with session_scope() as session:
        rows = [
            (
                tenant.name,
                _when(tenant.created_at),
                _limit(tenant.requests_per_minute, settings.default_requests_per_minute),
                _limit(tenant.max_jobs_in_flight, settings.default_max_jobs_in_flight),
                _ceiling(tenant.max_priority, settings.default_max_priority),
                str(in_flight),
            )
            for tenant, in_flight in tenants.list_tenants(session)
        ]
    print_table(("TENANT", "CREATED", "REQUESTS/MIN", "MAX IN FLIGHT", "MAX PRIORITY", "IN FLIGHT"), rows)
    return 0


def cmd_tenants_set_quota(args: argparse.Namespace) -> int:
    from db import tenants
    from db.session import session_scope

    # An option left out is absent from args (argparse.SUPPRESS): that limit stays as it is.
    rpm = getattr(args, "requests_per_minute", tenants.UNSET)
    in_flight = getattr(args, "max_jobs_in_flight", tenants.UNSET)
    ceiling = getattr(args, "max_priority", tenants.UNSET)
    if rpm is tenants.UNSET and in_flight is tenants.UNSET and ceiling is tenants.UNSET:
        print("nothing to set: give --requests-per-minute, --max-jobs-in-flight and/or --max-priority", file=sys.stderr)
        return 2
    with session_scope() as session:
        tenant = tenants.get_tenant(session, name=args.name)
        if tenant is None:
            print(f"no tenant {args.name!r}", file=sys.stderr)
            return 1
        tenants.set_quota(
            session, tenant=tenant, requests_per_minute=rpm, max_jobs_in_flight=in_flight, max_priority=ceiling
        )
        now_rpm, now_in_flight, now_ceiling = tenant.requests_per_minute, tenant.max_jobs_in_flight, tenant.max_priority
    print(
        f"tenant {args.name}: requests_per_minute {_raw_limit(now_rpm)},"
        f" max_jobs_in_flight {_raw_limit(now_in_flight)},"
        f" max_priority {'default' if now_ceiling is None else now_ceiling}"
    )
    return 0


def quota_value(text: str) -> int | None:
    """A quota on the command line: a number (<= 0: unlimited) or 'default'."""
    if text == "default":
        return None
    from core.limits import parse_quota

    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number or 'default', got {text!r}") from None
    try:
        return parse_quota(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def priority_ceiling_value(text: str) -> int | None:
    """A priority ceiling on the command line: 0..9 or 'default'."""
    if text == "default":
        return None
    from core.limits import parse_priority_ceiling

    try:
        return parse_priority_ceiling(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ceiling(own: int | None, default: int) -> str:
    return f"{default} (default)" if own is None else str(own)


def _raw_limit(value: int | None) -> str:
    return "default" if value is None else "unlimited" if value <= 0 else str(value)


def _limit(own: int | None, default: int) -> str:
    value = default if own is None else own
    shown = "unlimited" if value <= 0 else str(value)
    return f"{shown} (default)" if own is None else shown


def _when(moment: "datetime | None") -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "-"
