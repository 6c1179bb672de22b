"""Streamed transfers: chunk sources, the bounded body stream, the batching sink, flat memory.

The bounds are measured on the objects (bytes queued, chunks kept, bytes
read ahead of what the client wrote), never with timers, and they must not
grow with the content's size.
"""

from __future__ import annotations

import hashlib
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stacklab.services.body_stream import BodyStream, StreamClosed
from stacklab.transport.client import ClientSession, ClientState
from stacklab.transport.events import CommandReceived, Event
from stacklab.transport.options import STACKLAB_DEFAULT, TransferOptions
from stacklab.transport.server import ServerSession
from stacklab.transport.sink import MemorySink, StreamSink
from stacklab.transport.source import IncrementalDigest, MemorySource, SourceFailed
from stacklab.wire import RUDP_ABORT_PREFIX, RUDP_HEADER, pack_rudp

from conftest import wait_for

CMD = b"FETCH http://127.0.0.1:8080/big.bin"


def pattern(offset: int, n: int) -> bytes:
    """Deterministic content without holding it: byte i is a function of i alone."""
    return bytes((i * 7 + (i >> 11)) & 0xFF for i in range(offset, offset + n))


def take_all(source: MemorySource | BodyStream, size: int) -> list[bytes]:
    chunks = []
    while (chunk := source.take(size)) is not None and chunk:
        chunks.append(bytes(chunk))
    return chunks


# -- sources and digests: Hypothesis ---------------------------------------------------


@given(st.binary(max_size=5000), st.integers(1, 700))
def test_memory_source_cuts_whole_chunks_and_ends(content: bytes, size: int) -> None:
    source = MemorySource(content)
    chunks = take_all(source, size)
    assert b"".join(chunks) == content
    assert all(len(c) == size for c in chunks[:-1])
    assert source.drained and source.take(size) == b""
    assert source.exact_length == len(content)
    assert source.digest() == hashlib.sha256(content).digest()


@given(st.lists(st.binary(max_size=3000), max_size=12))
def test_incremental_digest_equals_the_digest_of_the_whole(pieces: list[bytes]) -> None:
    d = IncrementalDigest()
    for p in pieces:
        d.update(memoryview(p))
    whole = b"".join(pieces)
    assert d.digest() == hashlib.sha256(whole).digest() and d.length == len(whole)


@given(
    st.integers(1, 600),
    st.integers(1, 8),
    st.lists(st.integers(0, 9), min_size=1, max_size=10),
    st.integers(0, 599),
)
def test_body_stream_gives_back_the_body_in_chunks(
    chunk: int, per_block: int, blocks: list[int], tail: int
) -> None:
    """Blocks of whole chunks (and a partial last one) come out as chunks, with their digest."""
    notified: list[int] = []
    stream = BodyStream(
        chunk, block=chunk * per_block, read_ahead=1, notify=lambda: notified.append(1)
    )
    assert stream.block_size == chunk * per_block
    assert stream.take(chunk) is None  # nothing yet: the next put wakes the loop
    sent = bytearray()
    out = bytearray()
    offset = 0
    for i, n in enumerate(blocks):
        last = i == len(blocks) - 1
        size = stream.block_size if n else 0
        if last:
            size = (n * chunk + tail % chunk) % (stream.block_size + 1)  # at most a block
        block = pattern(offset, size)
        offset += size
        sent += block
        stream.put(block, last=last)  # read_ahead=1: would block unless the queue was taken
        while (c := stream.take(chunk)) is not None and c:
            assert len(c) == chunk or (last and stream.drained)
            out += c
            assert stream.buffered <= stream.block_size
    assert stream.take(chunk) == b"" and stream.drained
    assert bytes(out) == bytes(sent)
    assert stream.digest() == hashlib.sha256(sent).digest()
    assert notified  # the first put after "nothing yet" poked the loop


def test_body_stream_failure_comes_after_the_data_already_read() -> None:
    stream = BodyStream(4, block=8)
    stream.put(b"abcdefgh")
    stream.fail("connection reset after 8 bytes")
    assert bytes(stream.take(4) or b"") == b"abcd"
    assert bytes(stream.take(4) or b"") == b"efgh"
    with pytest.raises(SourceFailed, match="connection reset"):
        stream.take(4)


def test_body_stream_back_pressure_and_close_release_the_producer() -> None:
    """put blocks while read_ahead bytes wait untaken; a take or a close lets it go."""
    stream = BodyStream(4, block=8, read_ahead=16)
    stream.put(b"x" * 8)
    stream.put(b"y" * 8)
    released = threading.Event()
    outcome: list[str] = []

    def producer() -> None:
        try:
            stream.put(b"z" * 8)
            outcome.append("put")
            stream.put(b"w" * 8)
            outcome.append("put")
        except StreamClosed:
            outcome.append("closed")
        released.set()

    t = threading.Thread(target=producer)
    t.start()
    assert stream.take(4) is not None  # a whole block leaves the queue: one more fits
    wait_for(lambda: outcome == ["put"], what="the blocked put to go through")
    assert stream.peak_queued <= 16
    stream.close()
    assert released.wait(10)
    t.join(10)
    assert outcome == ["put", "closed"]


@given(st.lists(st.binary(max_size=2000), max_size=30), st.integers(1, 4096))
def test_stream_sink_writes_everything_in_order_in_batches(
    payloads: list[bytes], batch: int
) -> None:
    written: list[int] = []
    sink = StreamSink(lambda view: written.append(bytes(view)), batch=batch)
    for p in payloads:
        sink.write(memoryview(p))
        assert sink.retained == batch
    whole = b"".join(payloads)
    assert sink.digest() == hashlib.sha256(whole).digest()
    assert b"".join(written) + sink.pending == whole  # the tail waits for finish()
    sink.finish()
    assert b"".join(written) == whole and sink.size == len(whole) == sink.written
    assert all(len(w) <= max(batch, max(map(len, payloads), default=0)) for w in written)
    assert sink.digest() == hashlib.sha256(whole).digest()


# -- the engine in virtual time with a lazy source --------------------------------------


class LazySource:
    """N bytes made on demand; every third ``take`` says "nothing yet" first (a slow origin)."""

    def __init__(self, size: int, fail_at: int | None = None) -> None:
        self.size = size
        self.fail_at = fail_at
        self.offset = 0
        self.calls = 0
        self.hash = hashlib.sha256()
        self.closed = False

    exact_length = None

    @property
    def drained(self) -> bool:
        return self.offset >= self.size

    def take(self, size: int) -> bytes | None:
        self.calls += 1
        if self.calls % 3 == 0:
            return None
        if self.fail_at is not None and self.offset >= self.fail_at:
            raise SourceFailed("the origin closed the connection")
        n = min(size, self.size - self.offset)
        chunk = pattern(self.offset, n)
        self.offset += n
        self.hash.update(chunk)
        return chunk

    def digest(self) -> bytes:
        return self.hash.digest()

    def close(self) -> None:
        self.closed = True


def drain(session: ServerSession | ClientSession) -> list[Event]:
    out = []
    while (e := session.next_event()) is not None:
        out.append(e)
    return out


def run_lazy(
    size: int,
    options: TransferOptions | None,
    seed: int,
    loss: float = 0.02,
    fail_at: int | None = None,
) -> tuple[ServerSession, ClientSession, LazySource, StreamSink, bytes, dict[str, int]]:
    """One transfer over a lossy in-memory link, a 10 ms step clock; peaks measured each step."""
    rng = random.Random(seed)
    server = ServerSession()
    written: list[int] = []
    hashed = hashlib.sha256()

    def write(view: memoryview) -> None:
        hashed.update(view)
        written.append(len(view))  # keep nothing but the size of each write

    sink = StreamSink(write, batch=64 * 1024)
    client = ClientSession(CMD.decode(), options, sink=sink, trace=False)
    source = LazySource(size, fail_at)
    peaks = {"kept": 0, "kept_bytes": 0, "ahead": 0}
    wire: list[tuple[float, str, bytes]] = []
    now = 0.0
    client.start(now)
    while now < 600:
        client_over = client.state in (ClientState.DONE, ClientState.FAILED)
        if client_over and (server.done or server.failed is not None) and not wire:
            break
        for d in client.datagrams_to_send(now):
            if rng.random() >= loss:
                wire.append((now + 0.01, "s", d))
        for d in server.datagrams_to_send(now):
            if rng.random() >= loss or d[8:9] != b"D":
                wire.append((now + 0.01, "c", d))
        for e in drain(server):
            if isinstance(e, CommandReceived):
                server.provide_content(source, now)
        drain(client)
        sender = server.sender
        if sender is not None:
            peaks["kept"] = max(peaks["kept"], sender.kept)
            peaks["kept_bytes"] = max(peaks["kept_bytes"], sender.kept_bytes)
            peaks["ahead"] = max(peaks["ahead"], source.offset - sink.size)
        now = round(now + 0.01, 6)
        due = [w for w in wire if w[0] <= now]
        wire = [w for w in wire if w[0] > now]
        for _, dst, d in due:
            (server if dst == "s" else client).receive_datagram(d, now)
        for s in (server, client):
            timer = s.get_timer()
            if timer is not None and timer <= now:
                s.handle_timer(now)
    sink.finish()
    # Batched: every write but the last is a full batch (up to a chunk that did not fit).
    assert all(n > 64 * 1024 - 1457 for n in written[:-1]) and sum(written) == sink.size
    return server, client, source, sink, hashed.digest(), peaks


@pytest.mark.parametrize("options", [STACKLAB_DEFAULT, None], ids=["negotiated", "legacy"])
def test_lazy_source_memory_is_flat_in_the_size(options: TransferOptions | None) -> None:
    """The sender keeps at most a window of chunks and the client one batch, for 0.5 or 2 MB."""
    opts = options or TransferOptions(chunk_size=500, max_window=5)
    bounds = []
    for size in (500_000, 2_000_000):
        server, client, source, sink, written, peaks = run_lazy(size, options, seed=size)
        assert client.state is ClientState.DONE, client.failed
        assert server.done and sink.size == size
        assert written == source.hash.digest()  # what reached the file is what was made
        assert client.sha256 == source.hash.hexdigest()
        window = server.options.max_window
        assert peaks["kept"] <= window
        assert peaks["kept_bytes"] <= window * opts.chunk_size
        assert sink.retained == 64 * 1024
        # What the origin produced and the client has not written yet: a window, plus
        # the chunks the client holds in its batch.  Nothing here grows with the size.
        assert peaks["ahead"] <= window * opts.chunk_size + 64 * 1024 + opts.chunk_size
        bounds.append((peaks["kept"], window))
    assert bounds[0][1] == bounds[1][1]


def test_mid_body_failure_ends_with_an_abort_fin_in_a_negotiated_session() -> None:
    server, client, source, sink, _, _ = run_lazy(
        200_000, STACKLAB_DEFAULT, seed=3, loss=0.0, fail_at=100_000
    )
    assert client.state is ClientState.FAILED
    assert client.failed is not None and "aborted" in client.failed
    assert "the origin closed the connection" in client.failed
    assert server.failed is not None and "failed mid-transfer" in server.failed
    assert not server.done and source.closed
    assert sink.size < 200_000  # what arrived is a prefix, and the caller was told it failed


def test_mid_body_failure_sends_no_fin_to_an_original_client() -> None:
    server = ServerSession()
    server.receive_datagram(pack_rudp(100, 0, b"S"), 0.0)
    server.receive_datagram(pack_rudp(101, 0, b"D", CMD), 0.0)
    source = LazySource(10_000, fail_at=1000)
    source.calls = 1  # no "nothing yet" in this run
    server.provide_content(source, 0.0)
    sent = server.datagrams_to_send(0.0)
    seq = 0
    for step in range(1, 10):
        for d in sent:
            seq = max(seq, RUDP_HEADER.unpack_from(d)[0])
        server.receive_datagram(pack_rudp(0, seq, b"A"), step / 10)
        sent = server.datagrams_to_send(step / 10)
        assert all(d[8:9] != b"F" for d in sent)
        if server.failed is not None:
            break
    assert server.failed is not None and "origin closed" in server.failed
    assert server.datagrams_to_send(1.0) == [] and source.closed


def test_abort_fin_payload_is_recognised_with_integrity() -> None:
    """The ABORT FIN is never mistaken for a digest: the client fails with the reason."""
    _, client, *_ = run_lazy(50_000, STACKLAB_DEFAULT, seed=9, loss=0.0, fail_at=0)
    assert client.failed is not None and client.failed.endswith("the origin closed the connection")
    assert RUDP_ABORT_PREFIX == b"ABORT "


def test_a_memory_sink_still_gives_the_content() -> None:
    sink = MemorySink()
    for p in (b"ab", memoryview(b"cd")):
        sink.write(p)
    assert sink.content == b"abcd" and sink.digest() == hashlib.sha256(b"abcd").digest()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 40_000), st.integers(0, 2**16))
def test_streamed_and_in_memory_transfers_send_the_same_datagrams(size: int, seed: int) -> None:
    """The same content as bytes or as a (never pending) source: identical wire, same FIN."""

    def wire_of(content: bytes | LazySource) -> list[bytes]:
        s = ServerSession()
        s.receive_datagram(pack_rudp(100, 0, b"S"), 0.0)
        s.receive_datagram(pack_rudp(101, 0, b"D", CMD), 0.0)
        s.provide_content(content, 0.0)
        out: list[bytes] = []
        now = 0.0
        for _ in range(10_000):
            sent = s.datagrams_to_send(now)
            out += sent
            if s.done:
                break
            if sent:
                top = max(RUDP_HEADER.unpack_from(d)[0] for d in sent)
                s.receive_datagram(pack_rudp(0, top, b"A"), now)
            now += 0.01
        return out

    assert wire_of(pattern(seed, size)) == wire_of(_Shifted(seed, size))


class _Shifted(LazySource):
    """``pattern(shift, size)`` as a source that is never pending."""

    def __init__(self, shift: int, size: int) -> None:
        super().__init__(size)
        self.shift = shift

    def take(self, size: int) -> bytes | None:
        n = min(size, self.size - self.offset)
        chunk = pattern(self.shift + self.offset, n)
        self.offset += n
        return chunk
