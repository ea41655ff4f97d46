"""Line charts as inline SVG, drawn on the server: no script, no library, nothing fetched."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 40


@dataclass(frozen=True)
class Point:
    """One value at one labelled moment (value None: nothing to plot there)."""

    label: str
    value: float | None
    note: str = ""


def _nice_top(top: float) -> float:
    if top <= 0:
        return 1.0
    step = 10 ** (len(str(int(top))) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if top <= m * step:
            return m * step
    return 10 * step


def line_chart(title: str, points: Sequence[Point], *, unit: str = "min",
               empty: str = "no incident in this period") -> Markup:
    """An SVG line chart of points (left to right in the given order), with axes, ticks and hover titles."""
    values = [p.value for p in points if p.value is not None]
    top = _nice_top(max(values, default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = len(points)

    def x(i: int) -> float:
        return LEFT + (plot_w * (i + 0.5) / n if n else 0)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    for k in range(5):
        v = top * k / 4
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g} {unit}</text>')
    if not values:
        parts.append(f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
                     f'{escape(empty)}</text>')
    every = max(1, n // 8)
    for i, p in enumerate(points):
        if i % every == 0:
            parts.append(f'<text class="tick" x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">'
                         f'{escape(p.label)}</text>')
    run: list[str] = []
    runs: list[list[str]] = []
    for i, p in enumerate(points):
        if p.value is None:
            if run:
                runs.append(run)
            run = []
            continue
        run.append(f"{x(i):.1f},{y(p.value):.1f}")
    if run:
        runs.append(run)
    for r in runs:
        parts.append(f'<polyline class="line" points="{" ".join(r)}"/>')
    for i, p in enumerate(points):
        if p.value is not None:
            parts.append(f'<circle class="dot" cx="{x(i):.1f}" cy="{y(p.value):.1f}" r="3.5">'
                         f'<title>{escape(p.label)}: {p.value:.1f} {unit}{escape(p.note)}</title></circle>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
                 f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}" '
                 f'y2="{HEIGHT - BOTTOM}"/></svg>')
    return Markup("".join(parts))
