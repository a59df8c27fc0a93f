"""A small line chart written as SVG text (no plotting library needed): linear x axis, linear or
logarithmic y axis, polylines with point markers, dashed horizontal reference lines, a legend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 190, 40, 60


@dataclass(frozen=True)
class Line:
    label: str
    color: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False


@dataclass(frozen=True)
class Reference:
    label: str
    y: float
    color: str = "#888"


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values covering [low, high] on a linear scale."""
    span = max(high - low, 1e-9)
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = [round(first, 10)]
    while ticks[-1] < high:  # the last tick at or beyond `high`: every point inside the frame
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks from just below `low` to just above `high`."""
    ticks = []
    decade = 10 ** math.floor(math.log10(max(low, 1e-9))) / 10
    while decade <= high * 10:
        for m in (1, 2, 5):
            t = m * decade
            if low / 2.5 <= t <= high * 2.5:
                ticks.append(t)
        decade *= 10
    return ticks


def _label(value: float) -> str:
    return f"{value:,.0f}" if value >= 1 or value == 0 else f"{value:g}"


def line_chart(
    title: str,
    x_label: str,
    y_label: str,
    lines: Sequence[Line],
    references: Sequence[Reference] = (),
    *,
    log_y: bool = True,
    note: str = "",
) -> str:
    """The chart as an SVG document."""
    xs = [x for ln in lines for x, _ in ln.points]
    ys = [y for ln in lines for _, y in ln.points if y > 0] + [r.y for r in references]
    if not xs or not ys:
        raise ValueError("a chart needs at least one point")
    x_ticks = _nice_ticks(0.0, max(xs) * 1.05)
    x_max = x_ticks[-1]
    if log_y:
        y_ticks = _log_ticks(min(ys), max(ys))
        y_low, y_high = math.log10(y_ticks[0]), math.log10(y_ticks[-1])
    else:
        y_ticks = _nice_ticks(0.0, max(ys) * 1.05)
        y_low, y_high = 0.0, y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + x / x_max * plot_w

    def py(y: float) -> float:
        v = math.log10(max(y, 1e-9)) if log_y else y
        return TOP + plot_h - (v - y_low) / (y_high - y_low) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2:.0f}" y="22" text-anchor="middle" font-size="14">'
        f"{escape(title)}</text>",
    ]
    for t in x_ticks:
        x = px(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + plot_h}" stroke="#eee"/>'
        )
        out.append(
            f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{_label(t)}</text>'
        )
    for t in y_ticks:
        y = py(t)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
        )
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    out.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        f'stroke="black"/>'
    )
    out.append(
        f'<text x="{LEFT + plot_w / 2:.0f}" y="{HEIGHT - 22}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text x="16" y="{TOP + plot_h / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + plot_h / 2:.0f})">{escape(y_label)}</text>'
    )
    legend_y = TOP + 10
    for ref in references:
        y = py(ref.y)
        out.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" '
            f'stroke="{ref.color}" stroke-dasharray="6 4"/>'
        )
    for ln in lines:
        pts = sorted(ln.points)
        dash = ' stroke-dasharray="3 3"' if ln.dashed else ""
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts if y > 0)
        out.append(
            f'<polyline points="{coords}" fill="none" stroke="{ln.color}" stroke-width="2"{dash}/>'
        )
        for x, y in pts:
            if y > 0:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{ln.color}"/>')
    items: list[Line | Reference] = [*lines, *references]
    for item in items:
        x0 = LEFT + plot_w + 12
        dash = ""
        if isinstance(item, Reference):
            dash = ' stroke-dasharray="6 4"'
        elif item.dashed:
            dash = ' stroke-dasharray="3 3"'
        out.append(
            f'<line x1="{x0}" y1="{legend_y}" x2="{x0 + 22}" y2="{legend_y}" '
            f'stroke="{item.color}" stroke-width="2"{dash}/>'
        )
        out.append(f'<text x="{x0 + 28}" y="{legend_y + 4}">{escape(item.label)}</text>')
        legend_y += 18
    if note:
        out.append(
            f'<text x="{LEFT}" y="{HEIGHT - 6}" font-size="10" fill="#555">{escape(note)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
