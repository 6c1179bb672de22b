"""Charts of a RUDP session with matplotlib: the time-sequence graph and the window graph.

They follow the conventions of tcptrace and Wireshark's stream graphs, so a
reader who knows those reads these at once:

* time-sequence: x is time, y the chunk number; every DATA is a mark, a
  retransmission a red mark with an ``R``, the client's cumulative ACK a step
  line underneath, go-backs and timeouts vertical markers;
* window: the chunks in flight (last chunk sent minus the cumulative ACK)
  over time (its sawtooth is the sender's AIMD window at work), the window
  the verifier's AIMD model allows (an upper bound), the maximum window as a
  ceiling, and when an events log is given the sender's own window on top.

matplotlib is imported here, and this module is imported only by ``stacklab
plot`` and ``stacklab report``: the rest of stacklab starts without it.  The
figures are built with the object API and the Agg canvas (no ``pyplot``, no
global state, no display needed).
"""

from __future__ import annotations

import io
import os
import re
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from stacklab.files import Output, write_atomically, write_output
from stacklab.wire import ORIGINAL_MAX_WINDOW

if TYPE_CHECKING:
    from stacklab.analysis.series import SessionSeries

NEW_COLOUR: Final = "#1f77b4"
RETX_COLOUR: Final = "#d62728"
ACK_COLOUR: Final = "#2ca02c"
TIMEOUT_COLOUR: Final = "#d62728"
DUPACK_COLOUR: Final = "#9467bd"
WINDOW_COLOUR: Final = "#ff7f0e"
SENDER_COLOUR: Final = "#2ca02c"
MAX_R_LABELS: Final = 40
"""Retransmission bursts labelled with an ``R``; beyond this the colour alone says it."""
RASTER_ABOVE: Final = 3000
"""Marks drawn as an embedded image (not one SVG element each) above this count."""

FORMATS: Final = ("png", "svg")


def new_figure(width: float = 10.0, height: float = 5.0, *, constrained: bool = True) -> Figure:
    """A figure on an Agg canvas, outside pyplot's global registry."""
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


_GO_BACK_STYLE: Final[dict[str, tuple[str, Any, str]]] = {
    "timeout": (TIMEOUT_COLOUR, "--", "timeout → go-back"),
    "dupack": (DUPACK_COLOUR, ":", "duplicate ACKs → go-back"),
    "unexplained": ("black", "--", "unexplained go-back (a Go-Back-N fault)"),
    "go-back": ("grey", ":", "go-back"),
}
MAX_GO_BACK_LINES: Final = 30
"""Go-backs drawn as full-height lines; more are drawn as ticks along the top edge."""


def _gap_lines(ax: Axes, series: SessionSeries) -> list[Line2D]:
    """Mark go-backs (lines, or ticks when many); return legend handles for the kinds present."""
    handles: list[Line2D] = []
    kinds: dict[str, list[float]] = {}
    for t, _chunk, kind in series.go_backs:
        kinds.setdefault(kind, []).append(t)
    many = len(series.go_backs) > MAX_GO_BACK_LINES
    for name, (colour, style, label) in _GO_BACK_STYLE.items():
        times = kinds.get(name)
        if not times:
            continue
        if many:
            ax.plot(
                times,
                [1.0] * len(times),
                transform=ax.get_xaxis_transform(),
                marker="v",
                linestyle="",
                color=colour,
                markersize=6,
                clip_on=False,
                zorder=6,
            )
            handles.append(
                Line2D(
                    [], [], color=colour, marker="v", linestyle="", label=f"{label} ({len(times)})"
                )
            )
        else:
            for t in times:
                ax.axvline(t, color=colour, linestyle=style, linewidth=0.9, alpha=0.6)
            handles.append(
                Line2D([], [], color=colour, linestyle=style, label=f"{label} ({len(times)})")
            )
    return handles


def _burst_starts(series: SessionSeries) -> list[tuple[float, int]]:
    """The first retransmission of each go-back burst: where an ``R`` label goes."""
    out: list[tuple[float, int]] = []
    go_backs = {(t, c) for t, c, _kind in series.go_backs}
    previous = False
    for t, c, retx in series.data:
        if retx and (not previous or (t, c) in go_backs):
            out.append((t, c))
        previous = retx
    return out


def data_time_range(series: SessionSeries) -> tuple[float, float | None]:
    """The time axis of a time-sequence graph: from the first DATA to the last event.

    The handshake and the fetch behind the command can take most of a short
    session; starting the axis at the first DATA keeps the transfer readable
    (the axis still counts from the SYN).  Without DATA the axis starts at 0.
    """
    if not series.data:
        return 0.0, None
    first = min(t for t, _c, _r in series.data)
    last = max(t for t, _c, _r in series.data)
    if series.acks:
        last = max(last, series.acks[-1][0])
    if series.fin is not None:
        last = max(last, series.fin)
    pad = max((last - first) * 0.04, 1e-3)
    return first - min(pad, first / 2), last + pad


def time_sequence_figure(series: SessionSeries, title: str) -> Figure:
    """The tcptrace-style time-sequence graph of one session."""
    fig = new_figure()
    draw_time_sequence(fig.add_subplot(), series, title)
    return fig


def draw_time_sequence(ax: Axes, series: SessionSeries, title: str) -> Axes:
    """Draw the time-sequence graph on ``ax`` (a notebook's own axes, or a new figure's)."""
    new = [(t, c) for t, c, retx in series.data if not retx]
    retx = [(t, c) for t, c, r in series.data if r]
    raster = len(series.data) > RASTER_ABOVE
    handles: list[Line2D] = []
    if series.acks:
        xs = [0.0] + [t for t, _ in series.acks]
        ys = [0] + [a for _, a in series.acks]
        ax.step(xs, ys, where="post", color=ACK_COLOUR, linewidth=1.3, zorder=5)
        handles.append(Line2D([], [], color=ACK_COLOUR, linewidth=1.4, label="cumulative ACK"))
    if new:
        ax.scatter(
            [t for t, _ in new],
            [c for _, c in new],
            s=14,
            marker="s",
            color=NEW_COLOUR,
            zorder=3,
            rasterized=raster,
        )
        handles.append(
            Line2D([], [], color=NEW_COLOUR, marker="s", linestyle="", label=f"DATA ({len(new)})")
        )
    if retx:
        ax.scatter(
            [t for t, _ in retx],
            [c for _, c in retx],
            s=30,
            marker="D",
            color=RETX_COLOUR,
            zorder=4,
            rasterized=raster,
        )
        firsts = _burst_starts(series)
        if len(firsts) <= MAX_R_LABELS:
            for t, c in firsts:
                ax.annotate(
                    "R",
                    (t, c),
                    xytext=(4, 3),
                    textcoords="offset points",
                    color=RETX_COLOUR,
                    fontsize=8,
                    fontweight="bold",
                ).set_in_layout(False)  # labels inside the axes: no need to lay them out
        handles.append(
            Line2D(
                [],
                [],
                color=RETX_COLOUR,
                marker="D",
                linestyle="",
                label=f"R: retransmission ({len(retx)})",
            )
        )
    handles += _gap_lines(ax, series)
    if series.fin is not None:
        top = max((c for _t, c, _r in series.data), default=0) + 1
        ax.scatter([series.fin], [top], marker="X", s=60, color="black", zorder=5)
        handles.append(
            Line2D([], [], color="black", marker="X", linestyle="", label=f"FIN seq={top}")
        )
    ax.set_title(title, fontsize=11, pad=12)
    ax.set_xlabel("time since the SYN (s)")
    ax.set_ylabel("chunk number (DATA seq)")
    ax.yaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    ax.grid(True, alpha=0.3)
    ax.set_xlim(*data_time_range(series))
    ax.set_ylim(bottom=0)
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.9)
    if not series.data:
        ax.text(0.5, 0.5, "no DATA in this session", transform=ax.transAxes, ha="center")
    _clip_note(ax, series)
    return ax


def window_figure(
    series: SessionSeries,
    title: str,
    max_window: int | None = None,
    sender: list[tuple[float, int]] | None = None,
) -> Figure:
    """The window graph: chunks in flight, the AIMD bound of the verifier, the ceiling.

    ``max_window`` defaults to the session's own limit (the window negotiated
    in its SYN-ACK, else the original 5).
    """
    fig = new_figure(10.0, 4.2)
    draw_window(fig.add_subplot(), series, title, max_window, sender)
    return fig


def draw_window(
    ax: Axes,
    series: SessionSeries,
    title: str,
    max_window: int | None = None,
    sender: list[tuple[float, int]] | None = None,
) -> Axes:
    """Draw the window graph on ``ax``; ``max_window`` as in :func:`window_figure`."""
    if max_window is None:
        max_window = series.window_limit or ORIGINAL_MAX_WINDOW
    handles: list[Line2D] = []
    if series.flight:
        xs = [0.0] + [t for t, _f in series.flight]
        flight = [0] + [f for _t, f in series.flight]
        ax.fill_between(xs, flight, step="post", color=NEW_COLOUR, alpha=0.25, linewidth=0)
        ax.step(xs, flight, where="post", color=NEW_COLOUR, linewidth=0.7, alpha=0.7)
        handles.append(
            Line2D([], [], color=NEW_COLOUR, linewidth=1.2, label="chunks in flight (capture)")
        )
    if series.window:
        xs = [0.0] + [t for t, _w in series.window]
        model = [1] + [w for _t, w in series.window]
        ax.step(xs, model, where="post", color=WINDOW_COLOUR, linewidth=1.6, linestyle="--")
        handles.append(
            Line2D(
                [],
                [],
                color=WINDOW_COLOUR,
                linewidth=1.6,
                linestyle="--",
                label="AIMD bound (verifier's model)",
            )
        )
    if sender:
        ax.step(
            [t for t, _ in sender],
            [w for _, w in sender],
            where="post",
            color=SENDER_COLOUR,
            linewidth=1.4,
            alpha=0.9,
        )
        handles.append(
            Line2D([], [], color=SENDER_COLOUR, linewidth=1.4, label="sender's window (events log)")
        )
    # A negotiated window (256, say) far above what the session used would
    # squash the curves to the bottom: then the ceiling is named, not drawn.
    peak = max(
        [1]
        + [f for _t, f in series.flight]
        + [w for _t, w in series.window]
        + [w for _t, w in sender or []]
    )
    if max_window > 2 * peak + 2:
        top = peak * 1.25 + 1.5
        label = f"maximum window ({max_window}, above the chart)"
    else:
        top = max_window + 1.5
        ax.axhline(max_window, color="black", linestyle="-.", linewidth=1.0)
        label = f"maximum window ({max_window})"
    handles.append(Line2D([], [], color="black", linestyle="-.", label=label))
    handles += _gap_lines(ax, series)
    ax.set_title(title, fontsize=11, pad=12)
    ax.set_xlabel("time since the SYN (s)")
    ax.set_ylabel("chunks")
    ax.set_ylim(0, top)
    ax.set_xlim(left=0)
    ax.yaxis.get_major_locator().set_params(integer=True)  # type: ignore[call-arg]
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    _clip_note(ax, series)
    return ax


def _clip_note(ax: Axes, series: SessionSeries) -> None:
    if series.clipped:
        ax.text(
            0.99,
            0.01,
            f"first points only: {series.points:,} DATA/ACK in the session",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="grey",
        )


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------


def save_figure(fig: Figure, path: str | os.PathLike[str] | Output, fmt: str) -> None:
    """Write ``fig`` to ``path`` atomically (see :func:`stacklab.files.write_atomically`).

    An :class:`~stacklab.files.Output` already checked by the output policy
    is written where it says (a FIFO or a device is written into).
    """

    def write(handle: BinaryIO) -> None:
        fig.savefig(handle, format=fmt, dpi=110, metadata=_metadata(fmt))

    if isinstance(path, Output):
        write_output(path, write)
    else:
        write_atomically(path, write)


def _metadata(fmt: str) -> dict[str, str | None]:
    if fmt == "svg":
        return {"Date": None, "Creator": "stacklab", "Format": None, "Type": None}
    return {"Software": "stacklab"}


_SVG_START = re.compile(r"^.*?(?=<svg\b)", re.DOTALL)
_NAMESPACES = re.compile(r'\s+xmlns(:\w+)?="[^"]*"')
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.DOTALL)


def inline_svg(fig: Figure) -> str:
    """``fig`` as an ``<svg>`` element to paste into an HTML page.

    The XML prolog, the DOCTYPE, the RDF metadata and the namespace
    declarations are removed: an HTML parser puts ``<svg>`` in the SVG
    namespace by itself, and the page then holds no URL at all, not even a
    namespace name that looks like one.  Text stays text (``svg.fonttype
    none``): smaller, and searchable in the page.
    """
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "stacklab"}):
        fig.savefig(buffer, format="svg", metadata=_metadata("svg"))
    text = _SVG_START.sub("", buffer.getvalue(), count=1)
    text = _METADATA.sub("", text, count=1)
    head, sep, rest = text.partition(">")
    return _NAMESPACES.sub("", head) + sep + rest


def close(fig: Figure) -> None:
    """Drop the figure's drawing state (figures hold large caches)."""
    fig.clear()
