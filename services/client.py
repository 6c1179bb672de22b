"""The client side of the stack: DHCP discover, DNS resolve, framed TCP fetch, atomic save.

Each step raises :class:`ClientError` with one clear sentence, which is what
``stacklab fetch`` shows the user.  The TCP fetch reads the 10-digit prefix,
then the body into one preallocated buffer (the original client's
``data += chunk`` was quadratic: 50 s for 10 MiB).
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable

from stacklab.wire import (
    DHCP_DISCOVER,
    DNS_STATUS_ERROR,
    DNS_STATUS_NOT_FOUND,
    DNS_STATUS_SUCCESS,
    ERROR_PREFIX,
    FETCH_COMMAND,
    FRAME_PREFIX_LEN,
    encode_frame,
    parse_frame_prefix,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSE = 2 * 1024**3
"""Refuse to allocate for a prefix that claims more than this (a lying server)."""
MAX_ERROR_TEXT = 8192
RECV_CHUNK = 1 << 20

Progress = Callable[[int, int], None]


class ClientError(Exception):
    """A client step failed; ``str()`` is one sentence for the user."""


class ServerError(ClientError):
    """The app server answered with its ``ERROR: ...`` text instead of the file."""


def _exchange(
    server: tuple[str, int], request: bytes, what: str, timeout: float, retries: int
) -> bytes:
    """Send one datagram and wait for the reply, resending up to ``retries`` times."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(server)  # only the server's replies are accepted
        except OSError as exc:
            raise ClientError(
                f"cannot reach the {what} server at {server[0]}:{server[1]}: {exc.strerror}"
            ) from None
        sock.settimeout(timeout)
        for attempt in range(1, retries + 2):
            log.debug("%s: attempt %d: sending %r", what, attempt, request)
            try:
                sock.send(request)
                return sock.recv(65535)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                raise ClientError(
                    f"no {what} server at {server[0]}:{server[1]} (port unreachable)"
                ) from None
            except OSError as exc:
                raise ClientError(
                    f"{what} exchange with {server[0]}:{server[1]} failed: {exc.strerror}"
                ) from None
    raise ClientError(
        f"no answer from the {what} server at {server[0]}:{server[1]} "
        f"after {retries + 1} attempts of {timeout:g} s"
    )


def _json_object(reply: bytes, what: str) -> dict[str, object]:
    try:
        data = json.loads(reply.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ClientError(
            f"the {what} server sent a reply that is not JSON: {reply[:80]!r}"
        ) from None
    if not isinstance(data, dict):
        raise ClientError(f"the {what} server sent unexpected JSON: {reply[:80]!r}")
    return data


def discover(dhcp: tuple[str, int], timeout: float = 2.0, retries: int = 2) -> str:
    """The original DHCP step: send ``DISCOVER``, return the offered address."""
    reply = _json_object(_exchange(dhcp, DHCP_DISCOVER, "DHCP", timeout, retries), "DHCP")
    if reply.get("type") != "OFFER" or not isinstance(reply.get("assigned_ip"), str):
        reason = reply.get("reason")
        raise ClientError(
            f"the DHCP server did not offer an address ({reason})"
            if reason
            else f"the DHCP server did not offer an address: {reply}"
        )
    return str(reply["assigned_ip"])


def resolve(dns: tuple[str, int], name: str, timeout: float = 2.0, retries: int = 2) -> str:
    """The original DNS step: JSON ``{"domain": name}``; return the address."""
    request = json.dumps({"domain": name}).encode()
    reply = _json_object(_exchange(dns, request, "DNS", timeout, retries), "DNS")
    status = reply.get("status")
    if status == DNS_STATUS_SUCCESS and isinstance(reply.get("ip"), str):
        return str(reply["ip"])
    if status == DNS_STATUS_NOT_FOUND:
        raise ClientError(f"DNS: {name} not found (NOT_FOUND)")
    if status == DNS_STATUS_ERROR:
        raise ClientError(f"DNS: the server rejected the query for {name} (ERROR)")
    raise ClientError(f"DNS: unexpected reply {reply}")


def looks_like_server_error(body: bytes | bytearray) -> bool:
    """The app protocol cannot tell a file from an error text; this is the original's rule.

    A short, single-line UTF-8 body starting with ``ERROR: `` is the server's
    error (every error the original server sends looks like that).
    """
    if len(body) > MAX_ERROR_TEXT or not body.startswith(ERROR_PREFIX.encode()):
        return False
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return "\n" not in text


def _recv_exactly(
    sock: socket.socket, view: memoryview, progress: Progress | None, total: int
) -> int:
    filled = 0
    while filled < len(view):
        n = sock.recv_into(view[filled:], min(RECV_CHUNK, len(view) - filled))
        if n == 0:
            return filled
        filled += n
        if progress is not None:
            progress(filled, total)
    return filled


def fetch_tcp(
    server: tuple[str, int],
    url: str,
    *,
    timeout: float = 10.0,
    progress: Progress | None = None,
    max_bytes: int = DEFAULT_MAX_RESPONSE,
) -> bytes:
    """Send ``FETCH url`` to a TCP app server; return the body or raise ClientError.

    ``timeout`` bounds the connect and every wait for data (a transfer that
    keeps moving is never cut); ``progress(received, total)`` is called as
    the body arrives.
    """
    where = f"{server[0]}:{server[1]}"
    try:
        sock = socket.create_connection(server, timeout=timeout)
    except ConnectionRefusedError:
        raise ClientError(f"connection refused by the app server at {where}") from None
    except TimeoutError:
        raise ClientError(f"timed out connecting to the app server at {where}") from None
    except OSError as exc:
        raise ClientError(
            f"cannot connect to the app server at {where}: {exc.strerror or exc}"
        ) from None
    with sock:
        try:
            sock.sendall(encode_frame(f"{FETCH_COMMAND} {url}".encode()))
            prefix = bytearray(FRAME_PREFIX_LEN)
            got = _recv_exactly(sock, memoryview(prefix), None, FRAME_PREFIX_LEN)
            if got < FRAME_PREFIX_LEN:
                raise ClientError(
                    f"the app server at {where} closed the connection without answering"
                )
            try:
                length = parse_frame_prefix(bytes(prefix))
            except ValueError:
                raise ClientError(
                    f"the app server at {where} sent a malformed frame prefix {bytes(prefix)!r}"
                ) from None
            if length > max_bytes:
                raise ClientError(
                    f"the app server announced {length} bytes, above the limit of {max_bytes}"
                )
            body = bytearray(length)
            if progress is not None:
                progress(0, length)
            got = _recv_exactly(sock, memoryview(body), progress, length)
        except TimeoutError:
            raise ClientError(f"timed out waiting for the app server at {where}") from None
        except ConnectionError as exc:
            raise ClientError(
                f"connection to the app server at {where} failed: {exc.strerror or exc}"
            ) from None
    if got < length:
        raise ClientError(
            f"the app server at {where} closed the connection after {got} of {length} bytes"
        )
    if looks_like_server_error(body):
        raise ServerError(f"the app server answered: {body.decode('utf-8')}")
    return bytes(body)
