"""The app servers' HTTP fetch, safe by default, and the FETCH command handling.

The original app server fetched whatever URL a client named, which makes it
an open proxy into the host's loopback and cloud metadata addresses (SSRF).
stacklab keeps the protocol and adds a :class:`FetchPolicy`:

* only ``http``/``https``; no user info in the URL;
* the host must be written canonically: a DNS name, a dotted-quad IPv4
  address (``127.0.0.1``) or a bracketed, compressed IPv6 address.  Forms
  that C resolvers quietly turn into addresses (``127.1``, ``0x7f000001``,
  ``2130706433``, ``0177.0.0.1``) are refused outright rather than
  normalised, so what the allowlist says is exactly what is reached;
* ``host`` or ``host:port`` must be on the allowlist (default: only the local
  origin ``127.0.0.1:8080``);
* every address the name resolves to that is not a public address
  (loopback, private, link-local such as ``169.254.169.254``, ...) must
  itself be on the allowlist, and the connection goes to the address that
  was checked (no second lookup for a DNS rebinding to exploit);
* redirects are followed only when the target passes the same checks;
* the body is capped (``max_bytes``) and the whole fetch is bounded by
  ``timeout`` seconds.

A streamed body (:func:`open_body`, :func:`stream_body`: the RUDP app
server sends the body while it reads it) has its own cap,
``max_stream_bytes`` (2 GiB by default: it costs no memory), and
``timeout`` bounds the connection and the headers, then each read: a body
may take as long as the client needs, as long as the origin keeps sending.

A refused URL never opens a connection.  Failures raise :class:`FetchError`
whose ``reason`` is the text that goes into
:func:`stacklab.wire.fetch_error_text`.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import quote, urljoin, urlsplit

from stacklab.wire import (
    ERROR_UNKNOWN_COMMAND,
    FETCH_COMMAND,
    ORIGIN_ADDR,
    ORIGIN_PORT,
    fetch_error_text,
)

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """A fetch failed or was refused; ``reason`` is the human text for the error frame."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class FetchPolicy:
    """What the app servers may fetch, and how much.

    ``allow`` entries are ``host`` (any port) or ``host:port``; IPv6 as
    ``[::1]:8080``.  Hosts are compared in canonical form (lower case).
    """

    allow: tuple[str, ...] = (f"{ORIGIN_ADDR}:{ORIGIN_PORT}",)
    schemes: tuple[str, ...] = ("http", "https")
    max_bytes: int = 128 * 1024 * 1024
    timeout: float = 30.0
    max_stream_bytes: int = 2 * 1024**3
    max_redirects: int = 5
    follow_redirects: bool = True
    _parsed: list[tuple[str, int | None]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.allow = tuple(self.allow)
        self.schemes = tuple(s.lower() for s in self.schemes)
        self._parsed = [parse_allow_entry(entry) for entry in self.allow]

    def allows(self, host: str, port: int) -> bool:
        """True when canonical ``host`` on ``port`` matches an allowlist entry."""
        return any(h == host and (p is None or p == port) for h, p in self._parsed)

    def allows_address(self, addr: IpAddress, port: int) -> bool:
        """True when a resolved non-public address is explicitly allowlisted."""
        return self.allows(str(addr), port)


def parse_allow_entry(entry: str) -> tuple[str, int | None]:
    """Split ``host[:port]`` into its canonical host and optional port; ValueError if malformed."""
    text = entry.strip().lower()
    port: int | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"allowlist entry {entry!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"allowlist entry {entry!r}: bad port")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text.isdigit():
            raise ValueError(f"allowlist entry {entry!r}: bad port")
        port = int(port_text)
    else:
        host = text
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"allowlist entry {entry!r}: port out of range")
    try:
        return canonical_host(host), port
    except FetchError as exc:
        raise ValueError(f"allowlist entry {entry!r}: {exc.reason}") from None


def canonical_host(host: str) -> str:
    """The canonical form of a URL host, or FetchError for anything ambiguous.

    IP literals must already be canonical (``ipaddress`` rejects ``127.1``,
    hex, octal and leading zeros); a name that the C resolver would read as
    an address (``inet_aton`` accepts it) or whose last label is numeric is
    refused, so it cannot smuggle in an address in disguise.
    """
    host = host.lower()
    if not host:
        raise FetchError("URL has no host")
    if ":" in host:
        try:
            addr6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise FetchError(f"invalid IPv6 address {host!r}") from None
        if str(addr6) != host:
            raise FetchError(f"non-canonical IPv6 address {host!r} (write {addr6})")
        return host
    try:
        addr4 = ipaddress.IPv4Address(host)
    except ValueError:
        pass
    else:
        return str(addr4)
    if not host.isascii() or not host.isprintable():
        raise FetchError(f"invalid host name {host!r}")
    try:
        socket.inet_aton(host)
    except (OSError, ValueError):
        pass
    else:
        raise FetchError(f"non-canonical IP address {host!r}")
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise FetchError(f"invalid host name {host!r}")
    if labels[-1].isdigit() or re.fullmatch(r"0x[0-9a-f]*", labels[-1]):
        raise FetchError(f"non-canonical IP address {host!r}")
    return name


@dataclass(frozen=True)
class Target:
    """A URL that passed the policy: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    address: str  # the checked address to connect to


Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses of ``host`` via the system resolver (TCP)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def check_url(url: str, policy: FetchPolicy, resolver: Resolver = system_resolver) -> Target:
    """Apply the policy to ``url``; return where to connect or raise FetchError.  No connection."""
    if any(c in url for c in "\r\n\t\x00 ") or not url.isprintable():
        raise FetchError("URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise FetchError(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in policy.schemes:
        raise FetchError(f"scheme {scheme or '(none)'!r} is not allowed")
    if scheme not in _DEFAULT_PORTS:
        raise FetchError(f"scheme {scheme!r} is not supported")
    if "@" in parts.netloc:
        raise FetchError("URLs with user info are not allowed")
    host_text = parts.hostname or ""
    host = canonical_host(host_text)
    port = _DEFAULT_PORTS[scheme] if port is None else port
    if port == 0:
        raise FetchError("port 0 is not allowed")
    shown = f"[{host}]" if ":" in host else host
    if not policy.allows(host, port):
        raise FetchError(f"host {shown}:{port} is not on the allowlist")
    try:
        literal: IpAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise FetchError(f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise FetchError(f"cannot resolve {host}")
    for text in addresses:
        addr = ipaddress.ip_address(text.split("%")[0])
        if not addr.is_global and literal is None and not policy.allows_address(addr, port):
            raise FetchError(f"{host} resolves to non-public address {addr}, not on the allowlist")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    if not path.isascii():  # http.client sends ASCII only: percent-encode UTF-8 like a browser
        path = quote(path, safe="/?=&;:@!$'()*+,%")
    return Target(scheme, host, port, path, addresses[0])


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that passed the policy, whatever the Host header says."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address
        self._context = ssl.create_default_context()

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


Fetcher = Callable[[str, FetchPolicy], bytes]
"""How an app server gets the bytes of a URL: :func:`fetch`, or a stand-in in tests and benchmarks."""


def fetch(url: str, policy: FetchPolicy, resolver: Resolver = system_resolver) -> bytes:
    """GET ``url`` under ``policy`` and return the body; FetchError on refusal or failure."""
    deadline = time.monotonic() + policy.timeout
    current = url
    for _ in range(policy.max_redirects + 1):
        target = check_url(current, policy, resolver)
        status, location, body = _get_once(target, policy, deadline)
        if status in REDIRECT_CODES and location is not None:
            if not policy.follow_redirects:
                raise FetchError(f"HTTP {status} redirect not followed")
            current = urljoin(current, location)
            try:
                check_url(current, policy, resolver)
            except FetchError as exc:
                raise FetchError(f"redirect refused: {exc.reason}") from None
            log.debug("redirect %d to %s", status, current)
            continue
        return body
    raise FetchError(f"more than {policy.max_redirects} redirects")


def _remaining(deadline: float, policy: FetchPolicy) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(f"timed out after {policy.timeout:g} s")
    return left


def _get_once(
    target: Target, policy: FetchPolicy, deadline: float
) -> tuple[int, str | None, bytes]:
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = cls(target, timeout=_remaining(deadline, policy))
    try:
        conn.request("GET", target.path, headers={"User-Agent": "stacklab", "Accept": "*/*"})
        response = conn.getresponse()
        if response.status in REDIRECT_CODES:
            return response.status, response.getheader("Location"), b""
        if not 200 <= response.status < 300:
            raise FetchError(f"HTTP {response.status} {response.reason}".rstrip())
        return response.status, None, _read_body(response, conn, policy, deadline)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(f"timed out after {policy.timeout:g} s") from None
    except ConnectionRefusedError:
        raise FetchError(f"connection refused by {target.host}:{target.port}") from None
    except ssl.SSLError as exc:
        raise FetchError(f"TLS error: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    finally:
        conn.close()


def _read_body(
    response: http.client.HTTPResponse,
    conn: http.client.HTTPConnection,
    policy: FetchPolicy,
    deadline: float,
) -> bytes:
    """Read into one buffer: preallocated when the length is known, grown linearly otherwise."""
    too_big = f"response exceeds the limit of {policy.max_bytes} bytes"
    length = response.length
    if length is not None:
        if length > policy.max_bytes:
            raise FetchError(too_big)
        buf = bytearray(length)
        view = memoryview(buf)
        filled = 0
        while filled < length:
            _set_timeout(conn, deadline, policy)
            n = response.readinto(view[filled : filled + READ_CHUNK])
            if not n:
                raise FetchError(f"connection closed after {filled} of {length} bytes")
            filled += n
        return bytes(buf)
    out = bytearray()
    chunk = bytearray(READ_CHUNK)
    chunk_view = memoryview(chunk)
    while True:
        _set_timeout(conn, deadline, policy)
        n = response.readinto(chunk_view)
        if not n:
            return bytes(out)
        if len(out) + n > policy.max_bytes:
            raise FetchError(too_big)
        out += chunk_view[:n]  # bytearray growth is amortised linear


def _set_timeout(conn: http.client.HTTPConnection, deadline: float, policy: FetchPolicy) -> None:
    left = _remaining(deadline, policy)
    if conn.sock is not None:
        conn.sock.settimeout(left)


# ---------------------------------------------------------------------------
# Streamed bodies: the response is opened here and read by the caller
# ---------------------------------------------------------------------------


class Body(Protocol):
    """An open response body: read piece by piece, then closed."""

    @property
    def length(self) -> int | None:
        """``Content-Length`` when the origin sent one."""
        ...

    def readinto(self, view: memoryview) -> int:
        """Fill the start of ``view``; 0 at the end; FetchError on failure."""
        ...

    def close(self) -> None: ...


class HttpBody:
    """The body of a response that passed the policy; every read is bounded by ``timeout``."""

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        policy: FetchPolicy,
    ) -> None:
        self._conn = conn
        self._response = response
        self._policy = policy
        self.length: int | None = response.length

    def readinto(self, view: memoryview) -> int:
        if self._conn.sock is not None:
            self._conn.sock.settimeout(self._policy.timeout)
        try:
            return self._response.readinto(view)
        except TimeoutError:
            raise FetchError(f"the origin was silent for {self._policy.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(_describe(exc)) from None

    def close(self) -> None:
        self._conn.close()


Opener = Callable[[str, FetchPolicy], Body]
"""How the RUDP app server opens a body to stream: :func:`open_body`, or a stand-in in tests."""


def open_body(url: str, policy: FetchPolicy, resolver: Resolver = system_resolver) -> Body:
    """GET ``url`` under ``policy`` up to its headers; the caller reads and closes the body.

    Everything that can fail before the first byte of the body (refusal,
    connection, status, redirects, a ``Content-Length`` above
    ``max_stream_bytes``) raises FetchError here, so the error text can
    still be the whole answer.
    """
    deadline = time.monotonic() + policy.timeout
    current = url
    for _ in range(policy.max_redirects + 1):
        target = check_url(current, policy, resolver)
        location, body = _open_once(target, policy, deadline)
        if body is not None:
            if body.length is not None and body.length > policy.max_stream_bytes:
                body.close()
                raise FetchError(f"response exceeds the limit of {policy.max_stream_bytes} bytes")
            return body
        if not policy.follow_redirects:
            raise FetchError(f"HTTP {location[0]} redirect not followed")
        current = urljoin(current, location[1])
        try:
            check_url(current, policy, resolver)
        except FetchError as exc:
            raise FetchError(f"redirect refused: {exc.reason}") from None
        log.debug("redirect %d to %s", location[0], current)
    raise FetchError(f"more than {policy.max_redirects} redirects")


def _open_once(
    target: Target, policy: FetchPolicy, deadline: float
) -> tuple[tuple[int, str], HttpBody | None]:
    """The open body of a 2xx answer, or ``((status, location), None)`` for a redirect."""
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    conn = cls(target, timeout=_remaining(deadline, policy))
    try:
        conn.request("GET", target.path, headers={"User-Agent": "stacklab", "Accept": "*/*"})
        response = conn.getresponse()
        location = response.getheader("Location")
        if response.status in REDIRECT_CODES and location is not None:
            conn.close()
            return (response.status, location), None
        if not 200 <= response.status < 300:
            raise FetchError(f"HTTP {response.status} {response.reason}".rstrip())
        return (response.status, ""), HttpBody(conn, response, policy)
    except FetchError:
        conn.close()
        raise
    except TimeoutError:
        conn.close()
        raise FetchError(f"timed out after {policy.timeout:g} s") from None
    except ConnectionRefusedError:
        conn.close()
        raise FetchError(f"connection refused by {target.host}:{target.port}") from None
    except ssl.SSLError as exc:
        conn.close()
        raise FetchError(f"TLS error: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise FetchError(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


class BlockSink(Protocol):
    """Where :func:`stream_body` puts blocks (a :class:`~stacklab.services.body_stream.BodyStream`)."""

    @property
    def block_size(self) -> int: ...

    def put(self, block: bytearray | bytes, *, last: bool = False) -> None: ...

    def fail(self, reason: str) -> None: ...


def stream_body(body: Body, sink: BlockSink, policy: FetchPolicy) -> int:
    """Read ``body`` to its end into ``sink`` in whole blocks; the bytes read.

    A failure mid-body (the origin closes early, goes silent, or sends more
    than ``max_stream_bytes``) is told to the sink with ``fail`` and logged;
    the body is closed in every case.  Whatever ``put`` raises (the session
    ended) stops the reading and propagates.
    """
    size = sink.block_size
    total = 0
    limit = policy.max_stream_bytes
    expected = body.length
    try:
        while True:
            block = bytearray(size)
            view = memoryview(block)
            filled = 0
            try:
                while filled < size:
                    n = body.readinto(view[filled:])
                    if not n:
                        break
                    filled += n
            except FetchError as exc:
                view.release()
                sink.fail(f"{exc.reason} after {total + filled} bytes")
                return total
            view.release()
            total += filled
            if total > limit:
                sink.fail(f"response exceeds the limit of {limit} bytes")
                return total
            last = filled < size
            if last:
                del block[filled:]
                if expected is not None and total < expected:
                    sink.fail(f"connection closed after {total} of {expected} bytes")
                    return total
            sink.put(block, last=last)
            if last:
                return total
    finally:
        body.close()


# ---------------------------------------------------------------------------
# The app protocol's command: shared by the TCP and RUDP app servers
# ---------------------------------------------------------------------------


def parse_command(command: bytes) -> tuple[str | None, bytes]:
    """``(url, b"")`` for a FETCH, else ``(None, the error text)`` to answer at once."""
    try:
        text = command.decode("utf-8")
    except UnicodeDecodeError:
        return None, ERROR_UNKNOWN_COMMAND.encode()
    verb, _, url = text.partition(" ")
    if verb != FETCH_COMMAND:
        return None, ERROR_UNKNOWN_COMMAND.encode()
    return url.strip(), b""


def open_command(command: bytes, policy: FetchPolicy, opener: Opener = open_body) -> bytes | Body:
    """Like :func:`handle_command`, but the fetched body comes back open, to be streamed.

    Bytes are a whole answer (an error text); a :class:`Body` is the start of
    a successful one.
    """
    url, answer = parse_command(command)
    if url is None:
        return answer
    try:
        body = opener(url, policy)
    except FetchError as exc:
        log.info("FETCH %s refused or failed: %s", url, exc.reason)
        return fetch_error_text(url, exc.reason).encode("utf-8")
    log.info(
        "FETCH %s -> streaming (%s bytes)", url, body.length if body.length is not None else "?"
    )
    return body


def handle_command(
    command: bytes, policy: FetchPolicy, fetcher: Callable[[str, FetchPolicy], bytes] = fetch
) -> bytes:
    """Answer one app-protocol request body: the fetched bytes or the original error text.

    ``FETCH <url>`` fetches under ``policy``; a failure becomes
    ``ERROR: Could not fetch '<url>'. Reason: <reason>``; anything else is
    ``ERROR: Unknown command. Use: FETCH <url>`` (byte-exact, WIRE.md).
    """
    try:
        text = command.decode("utf-8")
    except UnicodeDecodeError:
        return ERROR_UNKNOWN_COMMAND.encode()
    verb, _, url = text.partition(" ")
    if verb != FETCH_COMMAND:
        return ERROR_UNKNOWN_COMMAND.encode()
    url = url.strip()
    try:
        body = fetcher(url, policy)
    except FetchError as exc:
        log.info("FETCH %s refused or failed: %s", url, exc.reason)
        return fetch_error_text(url, exc.reason).encode("utf-8")
    log.info("FETCH %s -> %d bytes", url, len(body))
    return body
