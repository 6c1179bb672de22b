"""Synthetic captures of a correct RUDP transfer whose 4000-byte chunks were IP-fragmented.

Shared by the decode/verify tests and the two-engine comparison: IPv4 or
IPv6, fragments in order, reversed, shuffled or duplicated, one fragment lost,
or every frame cut by a snapshot length.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Final

from stacklab.analysis.synth import (
    IPV4_MF,
    Packet,
    dhcp_exchange,
    dns_exchange,
    ipv4,
    merge,
    simulate_transfer,
    write_capture,
)

CHUNK: Final = 4000
MTU: Final = 1500
CONTENT: Final = random.Random(7).randbytes(9 * CHUNK + 123)  # 10 chunks
START: Final = 1_700_000_000.0

ORDERS: Final = ("in-order", "reversed", "shuffled", "duplicated")
VARIANTS: Final = tuple((version, order) for version in (4, 6) for order in ORDERS)
"""(IP version, order of the fragments): the correct transfers, each must pass."""


def transfer(version: int, loss: float = 0.2) -> list[Packet]:
    """A correct Go-Back-N transfer of :data:`CONTENT` in 4000-byte chunks (with DHCP and DNS on IPv4)."""
    if version == 4:
        client, server = ("127.0.0.1", 41000), ("127.0.0.3", 2122)
    else:
        client, server = ("fd00::1", 41000), ("fd00::3", 2122)
    rudp = simulate_transfer(
        CONTENT,
        rng=random.Random(11),
        client=client,
        server=server,
        start=START + 0.01,
        chunk_size=CHUNK,
        loss=loss,
    )
    if version == 6:
        return list(rudp)
    return list(merge([[*dhcp_exchange(START), *dns_exchange(START + 0.002)], rudp]))


def order_hook(order: str, seed: int = 3) -> Callable[[list[bytes]], list[bytes]]:
    """The writer's fragment hook for one order of :data:`ORDERS`."""
    rng = random.Random(seed)

    def hook(fragments: list[bytes]) -> list[bytes]:
        if order == "reversed":
            return fragments[::-1]
        if order == "shuffled":
            shuffled = fragments[:]
            rng.shuffle(shuffled)
            return shuffled
        if order == "duplicated":  # one fragment twice, before the datagram completes
            extra = rng.randrange(len(fragments) - 1)
            return fragments[: extra + 1] + fragments[extra:]
        return fragments

    return hook


def write(path: Path, version: int, order: str = "in-order", **options: object) -> Path:
    """Write one fragmented transfer to ``path`` (pcapng); ``options`` go to the writer."""
    write_capture(
        path,
        transfer(version),
        fmt="pcapng",
        mtu=MTU,
        fragments=order_hook(order),
        **options,  # type: ignore[arg-type]
    )
    return path


def losing(
    datagram: int, keep: Callable[[list[bytes]], list[bytes]]
) -> Callable[[list[bytes]], list[bytes]]:
    """A hook that applies ``keep`` to the fragments of the ``datagram``-th fragmented datagram only."""
    seen = 0

    def hook(fragments: list[bytes]) -> list[bytes]:
        nonlocal seen
        seen += 1
        return keep(fragments) if seen == datagram else fragments

    return hook


def write_lossy(path: Path, version: int, whole: bool, datagram: int = 4) -> Path:
    """The transfer with one DATA datagram's middle fragment lost (``whole``: all of them)."""
    hook = losing(datagram, (lambda f: []) if whole else (lambda f: [f[0], *f[2:]]))
    write_capture(path, transfer(version), fmt="pcapng", mtu=MTU, fragments=hook)
    return path


def _overlapping(fragments: list[bytes]) -> list[bytes]:
    """IPv4: the tail first, then a fragment overlapping it with other bytes, then the rest."""
    second = fragments[1]
    offset = (int.from_bytes(second[6:8], "big") & 0x1FFF) * 8
    src, dst = (".".join(str(b) for b in second[i : i + 4]) for i in (12, 16))
    ident = int.from_bytes(second[4:6], "big")
    liar = ipv4(src, dst, 17, b"Z" * 64, ident, IPV4_MF | (offset - 8) // 8)
    return [*fragments[1:], liar, fragments[0]]


ADVERSARIAL: Final[dict[str, Callable[[list[bytes]], list[bytes]]]] = {
    # A lone copy of one fragment after its datagram completed: a new datagram, never complete.
    "late-duplicate": lambda f: [*f, f[1]],
    # The whole datagram twice at the IP level: reassembled and handed over twice.
    "twice": lambda f: f + f,
    # Overlapping fragments with different bytes: the lower offset wins.
    "overlap": _overlapping,
}
"""Unusual fragment sequences (IPv4) on which the two engines must still agree."""


def write_adversarial(path: Path, name: str) -> Path:
    """The transfer with every fragmented datagram sent as :data:`ADVERSARIAL` ``name`` says."""
    write_capture(path, transfer(4), fmt="pcapng", mtu=MTU, fragments=ADVERSARIAL[name])
    return path
