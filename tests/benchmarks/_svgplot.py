"""
A small line chart written as SVG text by hand (no plotting dependency), for
the scaling figures (tests/benchmarks/pg_scaling.py, chain_simulation.py).

The x axis is logarithmic in base 2 (1, 2, 4, 8, 16 receivers are evenly
spaced); the y axis is linear from 0 to a round number above the highest point
or target. A series may be solid, dashed or dotted; lines that run above the
plot (the ideal linear scaling) are clipped at its top edge; a target is a
labelled horizontal line. Everything a reader needs is in the file: title,
axis labels, ticks, a legend; the text is plain ASCII with XML escaping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

WIDTH = 760
HEIGHT = 460
LEFT, RIGHT, TOP, BOTTOM = 78, 210, 48, 62

DASHES = {"solid": "", "dashed": "7 5", "dotted": "2 4", "dashdot": "8 4 2 4"}


@dataclass(frozen=True)
class Series:
    """One line: its label, its points ``(x, y)``, colour and dash style."""

    label: str
    points: Sequence[tuple[float, float]]
    color: str = "#1f77b4"
    dash: str = "solid"
    markers: bool = True


@dataclass(frozen=True)
class Chart:
    """A chart: title, axis labels, x ticks, the series and an optional target."""

    title: str
    x_label: str
    y_label: str
    x_ticks: Sequence[float]
    series: Sequence[Series]
    target: float | None = None
    target_label: str = "target"
    note: str = ""
    y_max: float | None = None


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    power: float = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value:
            return step * power
    return 10.0 * power


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == 0 else f"{value:g}"


def render(chart: Chart) -> str:
    """The chart as the text of an SVG file."""
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    xs = [x for x in chart.x_ticks if x > 0]
    x_lo, x_hi = math.log2(min(xs)), math.log2(max(xs))
    span = (x_hi - x_lo) or 1.0
    highest = max(
        [y for s in chart.series if s.dash != "dotted" for _, y in s.points]
        + ([chart.target] if chart.target else [])
        + [1.0]
    )
    y_top = chart.y_max or nice_ceiling(highest * 1.1)

    def px(x: float) -> float:
        return LEFT + (math.log2(x) - x_lo) / span * plot_w

    def py(y: float) -> float:
        return TOP + plot_h - y / y_top * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(chart.title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<clipPath id="plot"><rect x="{LEFT}" y="{TOP}" width="{plot_w}" '
        f'height="{plot_h}"/></clipPath>',
        f'<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{escape(chart.title)}</text>',
    ]
    # y grid and ticks: five intervals
    for i in range(6):
        value = y_top * i / 5
        y = py(value)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>'
        )
        out.append(f'<text x="{LEFT - 8}" y="{y + 4:.1f}" text-anchor="end">{_fmt(value)}</text>')
    for x in xs:
        X = px(x)
        out.append(
            f'<line x1="{X:.1f}" y1="{TOP}" x2="{X:.1f}" y2="{TOP + plot_h}" stroke="#f0f0f0"/>'
        )
        out.append(
            f'<text x="{X:.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{_fmt(x)}</text>'
        )
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>'
    )
    out.append(
        f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 18}" text-anchor="middle">'
        f"{escape(chart.x_label)}</text>"
    )
    out.append(
        f'<text transform="translate(20 {TOP + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(chart.y_label)}</text>'
    )
    legend: list[tuple[str, str, str]] = []
    if chart.target:
        y = py(chart.target)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" '
            'stroke="#d62728" stroke-width="1.5" stroke-dasharray="10 4"/>'
        )
        legend.append((chart.target_label, "#d62728", DASHES["dashed"]))
    for s in chart.series:
        pts = [(px(x), py(y)) for x, y in s.points if x > 0]
        if not pts:
            continue
        path = " ".join(f"{X:.1f},{Y:.1f}" for X, Y in pts)
        dash = DASHES.get(s.dash, "")
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="2"'
            f'{dash_attr} clip-path="url(#plot)"/>'
        )
        if s.markers:
            out.extend(
                f'<circle cx="{X:.1f}" cy="{Y:.1f}" r="3" fill="{s.color}" clip-path="url(#plot)"/>'
                for X, Y in pts
            )
        legend.append((s.label, s.color, dash))
    lx = LEFT + plot_w + 14
    for i, (label, color, dash) in enumerate(legend):
        y = TOP + 10 + i * 20
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="{color}" '
            f'stroke-width="2"{dash_attr}/>'
        )
        out.append(f'<text x="{lx + 30}" y="{y + 4}">{escape(label)}</text>')
    if chart.note:
        for i, line in enumerate(chart.note.splitlines()):
            out.append(
                f'<text x="{lx}" y="{TOP + 30 + len(legend) * 20 + i * 15}" font-size="10" '
                f'fill="#555">{escape(line)}</text>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"
