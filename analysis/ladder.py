"""The ladder (sequence) diagram of a whole capture: who sent what to whom.

One vertical line per host of the stack (client, DHCP server, DNS server,
app server, origin) and one arrow per packet, labelled with its decoded
fields (``DISCOVER``, ``OFFER 127.0.0.2``, ``SYN seq=100``, ``D seq=3``,
``A ack=3``, ``FIN seq=4``).  Hosts are recognised by role, from the service
ports, not by address: on loopback the client, the DHCP server and the
origin share 127.0.0.1.  A connection to the origin is drawn from the app
server, which is the one fetching.

Long transfers are compressed so the diagram stays readable: of each RUDP
session's DATA/ACK run only the first :data:`HEAD` and last :data:`TAIL`
arrows are drawn, and one gap row in between says how many packets (and
retransmissions) it stands for.  Pure TCP ACKs are left out, traffic that
is not the stack's is counted but not drawn, and the whole diagram is capped
at :data:`MAX_ARROWS` arrows.  Building the rows is pure and streaming
(:class:`LadderBuilder`); drawing it (:func:`ladder_figure`) needs
matplotlib.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from stacklab.analysis.decode import DecodedPacket
from stacklab.wire import Ports

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HOSTS: Final = ("client", "DHCP server", "DNS server", "app server", "origin")
HEAD: Final = 8
TAIL: Final = 6
MAX_ARROWS: Final = 220
LABEL_LIMIT: Final = 52

Kind = Literal["dhcp", "dns", "rudp", "retx", "app", "tcp", "gap"]


@dataclass(frozen=True, slots=True)
class Arrow:
    """One row of the diagram: an arrow between two hosts, or a gap note (``kind == "gap"``)."""

    frame: int
    time: float
    src: str
    dst: str
    label: str
    kind: Kind


@dataclass
class _Run:
    """The compressible DATA/ACK run of one RUDP session."""

    kept: int = 0
    tail: deque[Arrow] = field(default_factory=lambda: deque(maxlen=TAIL))
    dropped: int = 0
    dropped_retx: int = 0
    first_dropped: Arrow | None = None
    low: int | None = None
    high: int | None = None


@dataclass
class Ladder:
    """The rows to draw, in frame order, and what was left out."""

    arrows: list[Arrow]
    skipped_other: int = 0
    skipped_tcp_acks: int = 0
    compressed: int = 0
    capped: bool = False

    @property
    def hosts(self) -> list[str]:
        used = {a.src for a in self.arrows} | {a.dst for a in self.arrows}
        return [h for h in HOSTS if h in used] or ["client"]


def _port(endpoint: str) -> int:
    try:
        return int(endpoint.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


def _clip(text: str, limit: int = LABEL_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class LadderBuilder:
    """Turn decoded packets into ladder rows, compressing long RUDP runs on the way."""

    def __init__(self, ports: Ports = Ports(), max_arrows: int = MAX_ARROWS) -> None:  # noqa: B008
        self.ports = ports
        self.max_arrows = max_arrows
        self.rows: list[Arrow] = []
        self.runs: dict[str, _Run] = {}
        self.closed: list[_Run] = []
        self.skipped_other = 0
        self.skipped_tcp_acks = 0
        self.capped = False

    def roles(self, packet: DecodedPacket) -> tuple[str, str] | None:
        """(source host, destination host) of a packet of the stack, or None."""
        p = self.ports
        service = {p.dhcp: "DHCP server", p.dns: "DNS server", p.app: "app server"}
        service[p.rudp] = "app server"
        service[p.origin] = "origin"
        sport, dport = _port(packet.src), _port(packet.dst)
        if dport in service:
            dst = service[dport]
            return ("app server" if dst == "origin" else "client"), dst
        if sport in service:
            src = service[sport]
            return src, ("app server" if src == "origin" else "client")
        return None

    def feed(self, packet: DecodedPacket) -> None:
        roles = self.roles(packet)
        if roles is None:
            self.skipped_other += 1
            return
        src, dst = roles
        label, kind = self.label(packet)
        if kind == "tcp" and not label:
            self.skipped_tcp_acks += 1
            return
        arrow = Arrow(packet.frame, packet.time, src, dst, _clip(label), kind)
        if packet.proto == "rudp":
            flag = (packet.info or {}).get("flag")
            client = packet.src if src == "client" else packet.dst
            if flag == "S" and client in self.runs:
                self.closed.append(self.runs.pop(client))  # port reuse: a new session
            elif (flag == "D" and src == "app server") or (
                flag == "A" and src == "client" and client in self.runs
            ):
                self.runs.setdefault(client, _Run())
                self._run_arrow(client, arrow, packet.info or {})
                return
        self._add(arrow)

    def _run_arrow(self, client: str, arrow: Arrow, info: dict[str, object]) -> None:
        run = self.runs[client]
        seq = info.get("seq")
        if arrow.src == "app server" and isinstance(seq, int):
            run.low = seq if run.low is None else min(run.low, seq)
            run.high = seq if run.high is None else max(run.high, seq)
        if run.kept < HEAD:
            run.kept += 1
            self._add(arrow)
            return
        if len(run.tail) == TAIL:
            old = run.tail[0]
            if run.first_dropped is None:
                run.first_dropped = old
            run.dropped += 1
            run.dropped_retx += old.kind == "retx"
        run.tail.append(arrow)

    def _add(self, arrow: Arrow) -> None:
        if len(self.rows) >= self.max_arrows:
            self.capped = True
            return
        self.rows.append(arrow)

    def label(self, packet: DecodedPacket) -> tuple[str, Kind]:
        """The arrow's text: the decoded fields that matter, without the protocol name."""
        info = packet.info or {}
        if packet.proto == "rudp":
            flag = info.get("flag")
            if flag == "S":  # a payload: a stacklab client's options
                extra = " +options" if info.get("len") else ""
                return f"SYN seq={info.get('seq')}{extra}", "rudp"
            if flag == "A":  # a seq: a stacklab server's SYN cookie
                seq = info.get("seq")
                return (
                    f"A seq={seq} ack={info.get('ack')}" if seq else f"A ack={info.get('ack')}"
                ), "rudp"
            if flag == "F":
                return f"FIN seq={info.get('seq')}", "rudp"
            if flag == "D":
                if info.get("retransmission"):
                    return f"D seq={info.get('seq')} R", "retx"
                return f"D seq={info.get('seq')} len={info.get('len')}", "rudp"
            return packet.summary().removeprefix("RUDP "), "rudp"
        text = packet.summary()
        if packet.proto == "dhcp":
            return text.removeprefix("DHCP "), "dhcp"
        if packet.proto == "dns":
            return text.split(" ", 1)[-1], "dns"
        if packet.proto == "app":
            return text.removeprefix("APP ").removeprefix("frame "), "app"
        if packet.proto == "tcp":
            flags = str(info.get("flags", ""))
            size = info.get("len", 0)
            names = []
            if "S" in flags:
                names.append("SYN-ACK" if "A" in flags else "SYN")
            if "F" in flags:
                names.append("FIN")
            if "R" in flags:
                names.append("RST")
            if size:
                names.append(f"data {size} B")
            return " ".join(names), "tcp"
        return text, "tcp"

    def finish(self) -> Ladder:
        """Flush the runs' tails and gap notes; return the rows in frame order."""
        extra: list[Arrow] = []
        compressed = 0
        for run in [*self.closed, *self.runs.values()]:
            if run.first_dropped is not None and run.dropped:
                first = run.first_dropped
                note = f"… {run.dropped:,} more DATA/ACK packets"
                if run.dropped_retx:
                    note += f", {run.dropped_retx:,} retransmitted"
                if run.low is not None:
                    note += f", chunks {run.low}..{run.high}"
                note += " …"
                extra.append(Arrow(first.frame, first.time, first.src, first.dst, note, "gap"))
                compressed += run.dropped
            extra.extend(run.tail)
        rows = self.rows
        for arrow in extra:
            if len(rows) >= self.max_arrows:
                self.capped = True
                break
            rows.append(arrow)
        rows.sort(key=lambda a: (a.frame, a.kind == "gap"))
        return Ladder(rows, self.skipped_other, self.skipped_tcp_acks, compressed, self.capped)


def build_ladder(
    packets: Iterable[DecodedPacket],
    ports: Ports = Ports(),  # noqa: B008 - frozen dataclass
    max_arrows: int = MAX_ARROWS,
) -> Ladder:
    """Rows of the ladder of ``packets`` (decoded in capture order).

    A server DATA whose chunk is not above the highest one already sent in its
    session is a retransmission and drawn as such.
    """
    builder = LadderBuilder(ports, max_arrows)
    highest: dict[str, int] = {}
    for decoded in packets:
        packet = decoded
        info = packet.info
        if packet.proto == "rudp" and info is not None and info.get("flag") == "D":
            seq = info.get("seq")
            if _port(packet.src) == ports.rudp and isinstance(seq, int):
                top = highest.get(packet.dst, 0)
                if seq <= top:
                    packet = _as_retx(packet)
                else:
                    highest[packet.dst] = seq
            elif _port(packet.dst) == ports.rudp:
                highest.pop(packet.src, None)  # the client's command: a new session starts
        builder.feed(packet)
    return builder.finish()


def _as_retx(packet: DecodedPacket) -> DecodedPacket:
    info = dict(packet.info or {})
    info["retransmission"] = True
    return DecodedPacket(
        packet.frame, packet.time, packet.src, packet.dst, packet.proto, packet.text, info
    )


# ---------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------

_COLOURS: Final = {
    "dhcp": "#8c564b",
    "dns": "#17becf",
    "rudp": "#1f77b4",
    "retx": "#d62728",
    "app": "#9467bd",
    "tcp": "#7f7f7f",
    "gap": "#555555",
}
ROW_HEIGHT: Final = 0.27  # inches per arrow


def ladder_figure(ladder: Ladder, title: str) -> Figure:
    """Draw the ladder: hosts as columns, time flowing down, one row per arrow."""
    from stacklab.analysis.plots import new_figure

    hosts = ladder.hosts
    column = {h: i for i, h in enumerate(hosts)}
    rows = len(ladder.arrows)
    height = max(3.0, 1.6 + ROW_HEIGHT * (rows + 1))
    width = max(7.0, 2.3 * len(hosts) + 2.0)
    # Hundreds of labels: laid out by hand (margins in inches), not by the
    # constrained layout engine, which would measure every one of them.
    fig = new_figure(width, height, constrained=False)
    top = 1.0 - 0.5 / height
    fig.subplots_adjust(left=0.01, right=0.99, top=top, bottom=0.15 / height)
    ax = fig.add_subplot()
    bottom = rows + 0.5
    for h, x in column.items():
        ax.plot([x, x], [-0.6, bottom], color="#444444", linewidth=1.2, zorder=1)
        ax.text(
            x,
            -0.8,
            h,
            ha="center",
            va="bottom",
            fontsize=10,
            fontweight="bold",
            bbox={"boxstyle": "round,pad=0.3", "facecolor": "#eef2f7", "edgecolor": "#444444"},
        )
    for y, arrow in enumerate(ladder.arrows):
        colour = _COLOURS[arrow.kind]
        ax.text(
            -0.3,
            y,
            f"{arrow.time:9.4f}  #{arrow.frame}",
            ha="right",
            va="center",
            fontsize=7,
            color="#666666",
            family="monospace",
        )
        x0, x1 = column[arrow.src], column[arrow.dst]
        if arrow.kind == "gap":
            ax.text(
                (x0 + x1) / 2,
                y,
                arrow.label,
                ha="center",
                va="center",
                fontsize=8,
                style="italic",
                color=colour,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": "#fff8dc", "edgecolor": "#ccbb88"},
            )
            continue
        ax.annotate(
            "",
            xy=(x1, y),
            xytext=(x0, y),
            arrowprops={"arrowstyle": "-|>", "color": colour, "linewidth": 1.1},
        )
        ax.text(
            (x0 + x1) / 2,
            y - 0.08,
            arrow.label,
            ha="center",
            va="bottom",
            fontsize=7.5,
            color=colour,
            fontweight="bold" if arrow.kind == "retx" else "normal",
        )
    ax.set_xlim(-1.25, len(hosts) - 0.5)
    ax.set_ylim(bottom, -1.4)
    ax.axis("off")
    notes = []
    if ladder.compressed:
        notes.append(f"{ladder.compressed:,} DATA/ACK packets compressed")
    if ladder.skipped_tcp_acks:
        notes.append(f"{ladder.skipped_tcp_acks:,} bare TCP ACKs not drawn")
    if ladder.skipped_other:
        notes.append(f"{ladder.skipped_other:,} packets of other traffic not drawn")
    if ladder.capped:
        notes.append(f"only the first {len(ladder.arrows)} rows drawn")
    ax.set_title(title + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    return fig
