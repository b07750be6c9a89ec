"""The private-address guard: what it refuses, and fetches against a real HTTP server on loopback."""

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

from core import address_guard
from core.address_guard import (
    BlockedAddress,
    FetchError,
    FetchFailed,
    FetchTimeout,
    InvalidUrl,
    RefusedPort,
    TooLarge,
    UnresolvableHost,
    check_url,
    fetch,
)

REFUSED = [
    "https://127.0.0.1/",
    "https://127.0.0.2/x",
    "https://10.1.2.3/",
    "https://192.168.0.1/",
    "https://172.16.5.4/",
    "https://169.254.169.254/latest/meta-data/",
    "https://[::1]/",
    "https://[fe80::1]/",
    "https://0.0.0.0/",
    "https://[::]/",
    "https://100.64.0.1/",
    "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:169.254.169.254]/",
    "https://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "https://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "https://[fd00:ec2::254]/",  # the IPv6 metadata address of EC2
    "https://[fec0::1]/",  # site-local: deprecated, yet routed inside some networks
    "https://224.0.0.1/",
    "https://240.0.0.1/",
    "https://2130706433/",  # 127.0.0.1 written as one number
    "https://0x7f.1/",  # and in hex
    "https://localhost/",
    "https://LOCALHOST./",
    "https://api.localhost/",
    "https://metadata.google.internal/computeMetadata/v1/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_addresses_are_refused(url: str) -> None:
    with pytest.raises(BlockedAddress) as caught:
        check_url(url, allow_private=False)
    assert "addresses are refused" in str(caught.value)


def test_the_message_names_the_address_and_the_reason() -> None:
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254 is a link-local \(cloud metadata\) address"):
        check_url("https://169.254.169.254/", allow_private=False)
    with pytest.raises(BlockedAddress, match=r"is a loopback \(IPv4 127\.0\.0\.1 inside IPv6\)"):
        check_url("https://[::ffff:127.0.0.1]/", allow_private=False)


def test_a_host_is_refused_if_any_of_its_addresses_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    _resolve_as(monkeypatch, {"mixed.test": ["93.184.216.34", "10.0.0.7"]})
    with pytest.raises(BlockedAddress, match=r"host 'mixed.test' resolves to 10\.0\.0\.7, which is a private"):
        check_url("https://mixed.test/", allow_private=False)


def test_allow_private_lifts_the_address_checks() -> None:
    target = check_url("http://127.0.0.1:8080/a?b=1", allow_private=True)
    assert (target.ip, target.port, target.target, target.host_header) == (
        "127.0.0.1",
        8080,
        "/a?b=1",
        "127.0.0.1:8080",
    )


def test_a_public_address_passes() -> None:
    target = check_url("https://93.184.216.34/path?q=1#frag", allow_private=False)
    assert target.ip == "93.184.216.34"
    assert target.addresses == ("93.184.216.34",)
    assert (target.scheme, target.port, target.target) == ("https", 443, "/path?q=1")
    assert target.pinned_url == "https://93.184.216.34:443/path?q=1"
    v6 = check_url("https://[2606:4700::1111]:8443/", allow_private=False)
    assert v6.pinned_url == "https://[2606:4700::1111]:8443/"
    assert v6.host_header == "[2606:4700::1111]:8443"


@pytest.mark.parametrize(
    ("url", "allow_private", "message"),
    [
        ("ftp://93.184.216.34/file", False, "only https URLs are allowed"),
        ("file:///etc/passwd", False, "only https URLs are allowed"),
        ("file:///etc/passwd", True, "only http or https URLs are allowed"),
        ("gopher://127.0.0.1:6379/", True, "only http or https"),
        ("http://93.184.216.34/", False, "only https URLs are allowed"),
        ("https://user:pw@93.184.216.34/", False, "user name or password"),
        ("https://93.184.216.34@127.0.0.1/", True, "user name or password"),
        ("https:///path", False, "has no host"),
        ("https://93.184.216.34:99999/", False, "not a valid URL"),
        ("https://93.184.216.34:0/", False, "port 0"),
        ("https://exa mple.com/", False, "whitespace"),
        ("https://a..b/", False, "invalid host name"),
        ("", False, "empty"),
        ("https://example.com/" + "a" * 3000, False, "at most 2048"),
    ],
)
def test_malformed_urls_are_refused(url: str, allow_private: bool, message: str) -> None:
    with pytest.raises(InvalidUrl, match=message):
        check_url(url, allow_private=allow_private)


def test_http_is_allowed_with_allow_private() -> None:
    assert check_url("http://127.0.0.1/", allow_private=True).scheme == "http"


def test_an_unresolvable_host_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _resolve_as(monkeypatch, {})
    with pytest.raises(UnresolvableHost, match=r"cannot resolve host 'nowhere.test'"):
        check_url("https://nowhere.test/", allow_private=False)


@pytest.mark.parametrize("port", [22, 25, 5432, 6379, 11211, 65535])
def test_a_public_host_is_refused_on_a_port_no_web_server_uses(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    calls = _resolve_as(monkeypatch, {"hooks.test": ["93.184.216.34"]})
    with pytest.raises(RefusedPort, match=rf"has port {port}; only ports 80, 443, 8080, 8443 are allowed"):
        check_url(f"https://hooks.test:{port}/hook", allow_private=False)
    assert calls == []  # refused before any DNS query


@pytest.mark.parametrize("url", ["https://hooks.test/", "https://hooks.test:8443/", "https://hooks.test:8080/x"])
def test_a_public_host_passes_on_web_ports(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    _resolve_as(monkeypatch, {"hooks.test": ["93.184.216.34"]})
    assert check_url(url, allow_private=False).ip == "93.184.216.34"


def test_the_allowed_ports_are_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    _resolve_as(monkeypatch, {"hooks.test": ["93.184.216.34"]})
    assert check_url("https://hooks.test:9443/", allow_private=False, allowed_ports={9443}).port == 9443
    with pytest.raises(RefusedPort, match="only ports 9443 are allowed"):
        check_url("https://hooks.test/", allow_private=False, allowed_ports={9443})


def test_allow_private_lifts_the_port_check() -> None:
    assert check_url("http://127.0.0.1:6379/", allow_private=True, allowed_ports={443}).port == 6379


def test_every_error_is_a_fetch_error_and_a_value_error() -> None:
    for cls in (InvalidUrl, RefusedPort, BlockedAddress, UnresolvableHost, FetchTimeout, TooLarge, FetchFailed):
        assert issubclass(cls, FetchError)
        assert issubclass(cls, ValueError)


# Fetching, from a real server on loopback.

PAYLOAD = bytes(range(256)) * 40  # 10 240 bytes


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, str]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, "host": self.headers.get("Host", "")})
        route = self.path.split("?")[0]
        try:
            if route == "/ok":
                self._send(200, PAYLOAD, "application/octet-stream")
            elif route == "/host":
                self._send(200, self.headers["Host"].encode(), "text/plain")
            elif route == "/missing":
                self._send(404, b"no such thing", "text/plain")
            elif route == "/big":
                self._send(200, b"x" * 50_000, "application/octet-stream")
            elif route == "/stream":  # no Content-Length: the body ends when the connection closes
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b"y" * 1000)
            elif route == "/lying":  # claims 100 bytes, sends 50 000
                self.send_response(200)
                self.send_header("Content-Length", "100")
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"z" * 50_000)
            elif route == "/slow":
                time.sleep(3)
                self._send(200, b"late", "text/plain")
            elif route == "/drip":  # each byte arrives well within any read timeout; the whole never ends
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    self.wfile.write(b".")
                    self.wfile.flush()
                    time.sleep(0.1)
            elif route == "/redirect":
                location = self.path.partition("?to=")[2]
                self._redirect(302, location or "/ok")
            elif route == "/loop":
                n = int(self.path.partition("?n=")[2] or 0)
                self._redirect(302, f"/loop?n={n + 1}")
            else:
                self._send(500, b"unknown route", "text/plain")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as the tests intend

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        self.seen.append({"path": self.path, "host": self.headers.get("Host", ""), "method": "POST"})
        if self.path == "/see-other":
            self._redirect(303, "/ok")
        else:
            self._send(200, body, "application/octet-stream")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, status: int, location: str) -> None:
        self.send_response(status)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer is what the timeout and size tests do


class LocalServer:
    def __init__(self) -> None:
        handler: type[_Handler] = type("Handler", (_Handler,), {"seen": []})
        self.seen: list[dict[str, str]] = handler.seen
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    server = LocalServer()
    yield server
    server.close()


def _fetch(url: str, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"allow_private": True, "max_bytes": 1_000_000, "timeout_s": 5.0, **kwargs}
    return fetch(url, **options)


def test_fetch_returns_the_body(server: LocalServer) -> None:
    result = _fetch(server.url("/ok?x=1"))
    assert result.content == PAYLOAD
    assert result.content_type == "application/octet-stream"
    assert result.final_url == server.url("/ok?x=1")
    assert result.status_code == 200


def test_fetch_connects_to_the_vetted_address_with_the_original_host(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _resolve_as(monkeypatch, {"images.test": ["127.0.0.1"]})
    result = _fetch(f"http://images.test:{server.port}/host")
    assert result.content == f"images.test:{server.port}".encode()
    assert calls == ["images.test"]  # resolved once, by the guard; the connection used its answer


def test_a_body_past_max_bytes_is_refused(server: LocalServer) -> None:
    with pytest.raises(TooLarge, match="is 50000 bytes; at most 10000"):
        _fetch(server.url("/big"), max_bytes=10_000)
    with pytest.raises(TooLarge, match="sent more than 10000 bytes"):
        _fetch(server.url("/stream"), max_bytes=10_000)
    assert len(_fetch(server.url("/stream"), max_bytes=100_000).content) == 100_000


def test_a_lying_content_length_gets_no_more_than_it_declared(server: LocalServer) -> None:
    assert _fetch(server.url("/lying"), max_bytes=1000).content == b"z" * 100


def test_a_slow_server_hits_the_timeout(server: LocalServer) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=r"within 0\.5 s"):
        _fetch(server.url("/slow"), timeout_s=0.5)
    assert time.monotonic() - started < 1.5


def test_the_timeout_bounds_the_whole_body_not_each_read(server: LocalServer) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTimeout):
        _fetch(server.url("/drip"), timeout_s=1.0)
    assert time.monotonic() - started < 2.0


def test_a_non_2xx_status_is_fetch_failed(server: LocalServer) -> None:
    with pytest.raises(FetchFailed, match="answered 404 Not Found") as caught:
        _fetch(server.url("/missing"))
    assert caught.value.status_code == 404


def test_a_closed_port_is_fetch_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchFailed) as caught:
        _fetch(f"http://127.0.0.1:{port}/")
    assert caught.value.status_code is None


def test_redirects_are_followed(server: LocalServer) -> None:
    result = _fetch(server.url("/redirect"))
    assert result.content == PAYLOAD
    assert result.final_url == server.url("/ok")


def test_at_most_three_redirects_are_followed(server: LocalServer) -> None:
    with pytest.raises(FetchFailed, match="redirected more than 3 times"):
        _fetch(server.url("/loop?n=0"))
    with pytest.raises(FetchFailed, match="redirected more than 0 times"):
        _fetch(server.url("/loop?n=0"), max_redirects=0)


def test_a_redirect_to_another_scheme_is_refused(server: LocalServer) -> None:
    with pytest.raises(InvalidUrl, match="redirected to file:///etc/passwd, which is refused"):
        _fetch(server.url("/redirect?to=file:///etc/passwd"))


def test_a_see_other_after_post_turns_into_get(server: LocalServer) -> None:
    result = _fetch(server.url("/see-other"), method="POST", content=b"payload")
    assert result.content == PAYLOAD
    assert server.seen[-1]["path"] == "/ok" and "method" not in server.seen[-1]


@pytest.mark.parametrize(
    "location",
    ["http://169.254.169.254/latest/meta-data/", "http://localhost:{port}/ok", "http://10.0.0.1/", "http://[::1]/"],
)
def test_a_redirect_to_a_private_address_is_refused_before_connecting(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch, location: str
) -> None:
    # Stand-in for a public server: only the first hop's address, 127.0.0.1, counts as public.
    real = address_guard.blocked_reason
    monkeypatch.setattr(address_guard, "blocked_reason", lambda a: None if a == IPv4Address("127.0.0.1") else real(a))
    started = time.monotonic()
    with pytest.raises(BlockedAddress, match=r"which is refused: .*addresses are refused"):
        _fetch(
            server.url(f"/redirect?to={location.format(port=server.port)}"),
            allow_private=False,
            allowed_schemes=("http",),
            allowed_ports={server.port, 80},
        )
    assert time.monotonic() - started < 1.0  # no connection attempt to 169.254.169.254 timed out
    assert server.seen[-1]["path"].startswith("/redirect")


def test_a_redirect_to_a_refused_port_is_refused_before_connecting(
    server: LocalServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(address_guard, "blocked_reason", lambda a: None)  # 127.0.0.1 stands for a public host
    with pytest.raises(RefusedPort, match=r"which is refused: .* has port 6379; only ports"):
        _fetch(
            server.url("/redirect?to=http://127.0.0.1:6379/"),
            allow_private=False,
            allowed_schemes=("http",),
            allowed_ports={server.port},
        )
    assert server.seen[-1]["path"].startswith("/redirect")


def test_https_presents_the_original_host_name_for_sni(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    certificate, key = _self_signed(tmp_path, "images.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept_one() -> None:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass  # the client does not trust a self-signed certificate, as it should not

        thread = threading.Thread(target=accept_one, daemon=True)
        thread.start()
        _resolve_as(monkeypatch, {"images.test": ["127.0.0.1"]})
        with pytest.raises(FetchFailed, match="certificate verify failed"):
            _fetch(f"https://images.test:{port}/")
        thread.join(5)
    assert names == ["images.test"]


def test_fetch_refuses_to_block_an_event_loop() -> None:
    import asyncio

    async def inside_a_loop() -> None:
        with pytest.raises(RuntimeError, match="await fetch_async"):
            fetch("https://93.184.216.34/", allow_private=False, max_bytes=1, timeout_s=1)

    asyncio.run(inside_a_loop())


def _resolve_as(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> list[str]:
    """Make names in ``table`` resolve to its addresses (others fail); return the names looked up."""
    calls: list[str] = []

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]
        ]

    monkeypatch.setattr(address_guard.socket, "getaddrinfo", getaddrinfo)
    return calls


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path
