"""The private-address guard for outbound HTTP to client-supplied URLs (image URLs, webhooks).

``check_url`` parses a URL, refuses a port that web servers do not listen on, resolves its host and
refuses it when any address is loopback, private, link-local (cloud metadata included) or otherwise not
public. ``fetch`` then connects to the address
that was vetted, not to whatever the name resolves to a moment later (DNS rebinding), re-checks every
redirect, caps the body and bounds the whole exchange by one deadline.
"""

import asyncio
import re
import socket
from collections.abc import Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from ipaddress import ip_address
from urllib.parse import urljoin, urlsplit

import httpx

from core.public_addresses import Address, blocked_reason

MAX_URL_CHARS = 2048
MAX_REDIRECTS = 3
_DEFAULT_PORTS = {"http": 80, "https": 443}
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_REFUSED = "loopback, private, link-local and other non-public addresses are refused"
# The ports web servers listen on: HTTPS and HTTP, and their customary alternates. Any other port of a
# public host is some other service (mail, SSH, a database, a cache): a client URL pointing there would
# make this server probe or talk to it on the client's behalf.
DEFAULT_ALLOWED_PORTS = frozenset({443, 80, 8443, 8080})

# Names that reach this machine or a cloud metadata service whatever the resolver says.
_BLOCKED_NAMES = frozenset({"localhost", "metadata", "metadata.google.internal", "instance-data"})
_BLOCKED_SUFFIXES = (".localhost", ".internal")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")

# Resolution runs here rather than in the event loop's default executor: asyncio.run() joins that
# executor on exit, so a hung resolver would outlive the deadline.
_RESOLVER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="address-guard-dns")


class FetchError(ValueError):
    """A client-supplied URL cannot be fetched; the message says why, in words a client understands."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidUrl(FetchError):
    """The URL is malformed, too long, has a user name or password, or a scheme that is not allowed."""


class RefusedPort(InvalidUrl):
    """The URL names a port outside the allowed ones."""


class BlockedAddress(FetchError):
    """The URL's host is, or resolves to, a loopback, private, link-local or other non-public address."""

    def __init__(self, message: str, *, host: str, address: str | None = None) -> None:
        super().__init__(message)
        self.host = host
        self.address = address


class UnresolvableHost(FetchError):
    """The URL's host name does not resolve (possibly a transient DNS failure)."""


class FetchTimeout(FetchError):
    """The exchange did not finish within its deadline."""


class TooLarge(FetchError):
    """The response body is larger than allowed."""


class FetchFailed(FetchError):
    """No usable answer: a non-2xx status (``status_code``), too many redirects, or a connection error
    (``status_code`` None)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL that passed ``check_url``, with the address to connect to."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    target: str  # path and query, at least "/"
    ip: str  # the vetted address to connect to
    addresses: tuple[str, ...]  # every address the host resolved to, all vetted

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        """The ``Host`` header naming the original host (and port, when not the scheme's default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def pinned_url(self) -> str:
        """The URL with the vetted address in place of the host name."""
        ip = f"[{self.ip.replace('%', '%25')}]" if ":" in self.ip else self.ip
        return f"{self.scheme}://{ip}:{self.port}{self.target}"


@dataclass(frozen=True)
class FetchResult:
    content: bytes
    content_type: str | None
    final_url: str  # after redirects, as the client would write it (not the pinned address)
    status_code: int


def check_url(
    url: str,
    *,
    allow_private: bool,
    allowed_schemes: tuple[str, ...] = ("https",),
    allowed_ports: Collection[int] = DEFAULT_ALLOWED_PORTS,
) -> ResolvedTarget:
    """Parse and resolve ``url``; refuse it unless its port is allowed and every address it resolves to is
    public.

    ``allow_private`` (local development and tests only) lifts the address, host name and port checks
    and also allows ``http``. Raises InvalidUrl (RefusedPort for a port), BlockedAddress or
    UnresolvableHost.
    """
    scheme, host, port, target = _parse(url, allow_private=allow_private, allowed_schemes=allowed_schemes)
    if not allow_private:
        # Before resolving: a refused URL costs no DNS query.
        if port not in allowed_ports:
            allowed = ", ".join(str(p) for p in sorted(allowed_ports)) or "none"
            raise RefusedPort(f"{url!r} has port {port}; only ports {allowed} are allowed")
        _refuse_local_names(host)
    addresses = _resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = blocked_reason(address)
            if reason is not None:
                _refuse_address(host, address, reason)
    return ResolvedTarget(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        target=target,
        ip=str(addresses[0]),
        addresses=tuple(str(a) for a in addresses),
    )


def fetch(
    url: str,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    allowed_schemes: tuple[str, ...] = ("https",),
    allowed_ports: Collection[int] = DEFAULT_ALLOWED_PORTS,
    method: str = "GET",
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    max_redirects: int = MAX_REDIRECTS,
) -> FetchResult:
    """Blocking ``fetch_async``: for sync handlers and workers (threads without a running event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("fetch() blocks; in a coroutine, await fetch_async() instead")
    return asyncio.run(
        fetch_async(
            url,
            allow_private=allow_private,
            max_bytes=max_bytes,
            timeout_s=timeout_s,
            allowed_schemes=allowed_schemes,
            allowed_ports=allowed_ports,
            method=method,
            content=content,
            headers=headers,
            max_redirects=max_redirects,
        )
    )


async def fetch_async(
    url: str,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    allowed_schemes: tuple[str, ...] = ("https",),
    allowed_ports: Collection[int] = DEFAULT_ALLOWED_PORTS,
    method: str = "GET",
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    max_redirects: int = MAX_REDIRECTS,
) -> FetchResult:
    """Request ``url`` through the guard and return its 2xx body of at most ``max_bytes`` bytes.

    Every hop is vetted by ``check_url`` and requested from the vetted address (with the original
    ``Host`` header and, for https, the original name for SNI and certificate checks). At most
    ``max_redirects`` redirects are followed. ``timeout_s`` bounds everything: resolution, connecting,
    redirects and the whole body. Raises a FetchError subclass.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    try:
        async with asyncio.timeout(timeout_s):
            return await _exchange(
                url,
                allow_private=allow_private,
                max_bytes=max_bytes,
                timeout_s=timeout_s,
                allowed_schemes=allowed_schemes,
                allowed_ports=allowed_ports,
                method=method.upper(),
                content=content,
                headers=dict(headers or {}),
                max_redirects=max_redirects,
            )
    except TimeoutError:
        raise FetchTimeout(f"{method} {url} did not finish within {timeout_s:g} s") from None


async def _exchange(
    url: str,
    *,
    allow_private: bool,
    max_bytes: int,
    timeout_s: float,
    allowed_schemes: tuple[str, ...],
    allowed_ports: Collection[int],
    method: str,
    content: bytes | None,
    headers: dict[str, str],
    max_redirects: int,
) -> FetchResult:
    loop = asyncio.get_running_loop()
    check = partial(
        check_url, allow_private=allow_private, allowed_schemes=allowed_schemes, allowed_ports=allowed_ports
    )
    # trust_env=False: a proxy from the environment would connect to the host name, undoing the pin.
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout_s) as client:
        current, previous = url, None
        for hop in range(max_redirects + 1):
            try:
                target = await loop.run_in_executor(_RESOLVER, check, current)
            except FetchError as err:
                if previous is not None:
                    err.message = f"{previous} redirected to {current}, which is refused: {err.message}"
                raise
            request = client.build_request(
                method,
                target.pinned_url,
                content=content,
                headers={**headers, "Host": target.host_header, "Accept-Encoding": "identity"},
                extensions={"sni_hostname": target.host} if target.scheme == "https" else None,
            )
            with _transport_errors(method, target.url):
                response = await client.send(request, stream=True)
                try:
                    status = response.status_code
                    location = response.headers.get("location")
                    if status in _REDIRECT_STATUSES and location:
                        if hop == max_redirects:
                            raise FetchFailed(
                                f"{method} {url} redirected more than {max_redirects} times", status_code=status
                            )
                        previous, current = target.url, urljoin(target.url, location)
                        if status == 303 or (status in (301, 302) and method == "POST"):
                            method, content = "GET", None
                        if _origin(current) != target.origin:
                            headers = {}  # the caller's headers were meant for the first origin only
                        continue
                    if not 200 <= status < 300:
                        raise FetchFailed(
                            f"{method} {target.url} answered {status} {response.reason_phrase}".rstrip(),
                            status_code=status,
                        )
                    body = await _read_capped(response, max_bytes, target.url)
                    return FetchResult(body, response.headers.get("content-type"), target.url, status)
                finally:
                    await response.aclose()
    raise AssertionError("unreachable: the loop returns or raises")


async def _read_capped(response: httpx.Response, max_bytes: int, url: str) -> bytes:
    """The body, read as it streams in; refused as soon as it passes ``max_bytes``."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"{url} is {int(declared)} bytes; at most {max_bytes} are allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"{url} sent more than {max_bytes} bytes, the most allowed")
        chunks.append(chunk)
    return b"".join(chunks)


@contextmanager
def _transport_errors(method: str, url: str) -> Iterator[None]:
    """Turn httpx's exceptions into FetchErrors that name the URL."""
    try:
        yield
    except httpx.TimeoutException:
        raise FetchTimeout(f"{method} {url} timed out") from None
    except httpx.TransportError as err:
        raise FetchFailed(f"{method} {url} failed: {err or type(err).__name__}") from None
    except httpx.InvalidURL as err:
        raise InvalidUrl(f"{url!r} is not a valid URL: {err}") from None


def _parse(url: str, *, allow_private: bool, allowed_schemes: tuple[str, ...]) -> tuple[str, str, int, str]:
    """(scheme, ASCII host, port, path and query) of ``url``; raises InvalidUrl."""
    if not isinstance(url, str) or not url:
        raise InvalidUrl("the URL is empty")
    if len(url) > MAX_URL_CHARS:
        raise InvalidUrl(f"the URL is {len(url)} characters long; at most {MAX_URL_CHARS} are allowed")
    if any(ord(c) <= 0x20 or c in "\x7f\\" for c in url):
        raise InvalidUrl(f"{url!r} contains whitespace, control characters or a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise InvalidUrl(f"{url!r} is not a valid URL: {err}") from None
    scheme = parts.scheme.lower()
    schemes = {s.lower() for s in allowed_schemes} | ({"http"} if allow_private else set())
    if scheme not in schemes or scheme not in _DEFAULT_PORTS:
        allowed = " or ".join(sorted(schemes & _DEFAULT_PORTS.keys()))
        raise InvalidUrl(f"{url!r} has scheme {scheme or 'none'!r}; only {allowed} URLs are allowed")
    if "@" in parts.netloc:
        raise InvalidUrl(f"{url!r} contains a user name or password, which is not allowed")
    if not parts.hostname:
        raise InvalidUrl(f"{url!r} has no host")
    if port == 0:
        raise InvalidUrl(f"{url!r} has port 0; ports are 1..65535")
    host = _ascii_host(parts.hostname, url)
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return scheme, host, port or _DEFAULT_PORTS[scheme], target


def _ascii_host(host: str, url: str) -> str:
    try:
        return str(ip_address(host))
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise InvalidUrl(f"{url!r} has an invalid host name {host!r}") from None
    if not _HOST_NAME.fullmatch(ascii_host):
        raise InvalidUrl(f"{url!r} has an invalid host name {host!r}")
    return ascii_host


def _refuse_local_names(host: str) -> None:
    name = host.rstrip(".")
    if name in _BLOCKED_NAMES or name.endswith(_BLOCKED_SUFFIXES):
        raise BlockedAddress(f"host {host!r} names this machine or a cloud metadata service; {_REFUSED}", host=host)


def _resolve(host: str, port: int) -> list[Address]:
    """Every IPv4 and IPv6 address of ``host``, in the resolver's order, without repeats."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        detail = err.strerror if isinstance(err, socket.gaierror) else str(err)
        raise UnresolvableHost(f"cannot resolve host {host!r}: {detail}") from None
    addresses: list[Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ip_address(str(sockaddr[0]))
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise UnresolvableHost(f"host {host!r} has no IPv4 or IPv6 address")
    return addresses


def _refuse_address(host: str, address: Address, reason: str) -> None:
    where = f"{address}" if host == str(address) else f"host {host!r} resolves to {address}, which"
    raise BlockedAddress(f"{where} is a {reason} address; {_REFUSED}", host=host, address=str(address))


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        return (scheme, parts.hostname or "", parts.port or _DEFAULT_PORTS.get(scheme, 0))
    except ValueError:
        return None
