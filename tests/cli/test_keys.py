"""`imagen-queue keys` and `tenants`: API keys and quotas from the command line, against the real system."""

import subprocess
import sys
import uuid

import httpx

from tests.servers import REPO, System, wait_until


def _cli(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=system.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _ok(system: System, *args: str) -> str:
    done = _cli(system, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _status(system: System, key: str) -> int:
    return httpx.get(f"{system.api_url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code


def _row(output: str, first_cell: str) -> list[str]:
    """The cells of the table row that starts with ``first_cell`` (columns are two or more spaces apart)."""
    for line in output.splitlines():
        if line.split("  ")[0] == first_cell:
            return [cell.strip() for cell in line.split("  ") if cell.strip()]
    raise AssertionError(f"no row {first_cell!r} in:\n{output}")


def test_keys_create_list_and_revoke(system: System) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    key = _ok(system, "keys", "create", "--tenant", tenant).strip()
    admin_key = _ok(system, "keys", "create", "--tenant", tenant, "--admin").strip()
    assert key.startswith("iq_") and len(key) > 40
    assert _status(system, key) == 200

    listed = _ok(system, "keys", "list", "--tenant", tenant)
    assert key not in listed and admin_key not in listed, "a key is shown once, when it is created"
    prefix, admin_prefix = key[:10], admin_key[:10]
    assert _row(listed, prefix)[1:3] == [tenant, "no"] and _row(listed, prefix)[-1] == "-"
    assert _row(listed, admin_prefix)[1:3] == [tenant, "yes"]
    assert len(listed.splitlines()) == 3  # the header and this tenant's two keys
    assert prefix in _ok(system, "keys", "list")

    assert f"revoked {prefix}" in _ok(system, "keys", "revoke", prefix)
    # The API trusts what it read about a key for IMAGEN_API_KEY_CACHE_S (5 s): refused within that.
    wait_until(lambda: _status(system, key) == 401, 7, "the revoked key to be refused")
    assert _row(_ok(system, "keys", "list", "--tenant", tenant), prefix)[-1] != "-"  # its revocation time
    again = _cli(system, "keys", "revoke", prefix)
    assert again.returncode == 1 and "no live key matches" in again.stderr

    # The whole key works as well as its prefix.
    assert f"revoked {admin_prefix}" in _ok(system, "keys", "revoke", admin_key)
    assert _status(system, admin_key) == 401  # never used, so never cached


def test_tenants_list_and_set_quota(system: System) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    key = _ok(system, "keys", "create", "--tenant", tenant).strip()
    assert _row(_ok(system, "tenants", "list"), tenant)[-4:] == [
        "100000 (default)",
        "100 (default)",
        "9 (default)",
        "0",
    ]

    out = _ok(system, "tenants", "set-quota", tenant, "--requests-per-minute", "2", "--max-jobs-in-flight", "0")
    assert "requests_per_minute 2, max_jobs_in_flight unlimited" in out
    assert _row(_ok(system, "tenants", "list"), tenant)[-4:] == ["2", "unlimited", "9 (default)", "0"]
    # The API applies the new limit at once.
    assert [_status(system, key) for _ in range(3)] == [200, 200, 429]

    out = _ok(system, "tenants", "set-quota", tenant, "--requests-per-minute", "default")
    assert "requests_per_minute default, max_jobs_in_flight unlimited" in out
    assert _row(_ok(system, "tenants", "list"), tenant)[-4:] == ["100000 (default)", "unlimited", "9 (default)", "0"]
    out = _ok(system, "tenants", "set-quota", tenant, "--max-priority", "4")
    assert "max_priority 4" in out and _row(_ok(system, "tenants", "list"), tenant)[-2] == "4"
    for bad_ceiling in ("10", "-1", "high"):
        refused = _cli(system, "tenants", "set-quota", tenant, "--max-priority", bad_ceiling)
        assert refused.returncode == 2 and "priority ceiling" in refused.stderr, refused.stderr

    from db import tenants
    from db.session import session_scope

    with session_scope() as session:
        row = tenants.get_tenant(session, name=tenant)
        assert row is not None and (row.requests_per_minute, row.max_jobs_in_flight, row.max_priority) == (None, 0, 4)

    missing = _cli(system, "tenants", "set-quota", f"no-such-{tenant}", "--max-jobs-in-flight", "3")
    assert missing.returncode == 1 and "no tenant" in missing.stderr
    assert _cli(system, "tenants", "set-quota", tenant).returncode == 2
    bad = _cli(system, "tenants", "set-quota", tenant, "--max-jobs-in-flight", "lots")
    assert bad.returncode == 2 and "a whole number or 'default'" in bad.stderr
    huge = _cli(system, "tenants", "set-quota", tenant, "--max-jobs-in-flight", "99999999999")
    assert huge.returncode == 2 and "2147483647" in huge.stderr
