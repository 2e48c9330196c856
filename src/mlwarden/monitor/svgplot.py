"""Small inline-SVG charts for the monitor report: lines (optionally log-scaled) and grouped bars.

Why not matplotlib: importing it in the environment the dynamic analysis profiles changes what the frameworks
do at import (Keras then imports matplotlib, whose font manager runs ``fc-list``), which would make benign models
deviate from their profiles. These charts need axes, lines, bars, limits and a legend; that is all this draws.
Every text is XML-escaped; the output loads nothing from anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape

W, H = 480, 260
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 26, 40
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")

Point = tuple[float, float]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


class _Frame:
    def __init__(self, xs: Sequence[float], ys: Sequence[float], log_y: bool) -> None:
        self.log_y = log_y
        ys = [math.log10(max(y, 1e-300)) for y in ys] if log_y else list(ys)
        self.x0, self.x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
        self.y0, self.y1 = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if self.x1 == self.x0:
            self.x1 = self.x0 + 1
        if self.y1 == self.y0:
            self.y0, self.y1 = self.y0 - 0.5, self.y1 + 0.5
        pad = (self.y1 - self.y0) * 0.05
        self.y0, self.y1 = self.y0 - pad, self.y1 + pad

    def px(self, x: float) -> float:
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def py(self, y: float) -> float:
        v = math.log10(max(y, 1e-300)) if self.log_y else y
        return H - BOTTOM - (v - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def axes(self, title: str, xlabel: str, ylabel: str) -> list[str]:
        out = [
            f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
            'fill="none" stroke="#999"/>',
            f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="12">{escape(title)}</text>',
            f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle" font-size="10">{escape(xlabel)}</text>',
            f'<text x="12" y="{H / 2}" font-size="10" transform="rotate(-90 12 {H / 2})" '
            f'text-anchor="middle">{escape(ylabel)}</text>',
        ]
        for t in _ticks(self.x0, self.x1):
            out.append(
                f'<text x="{self.px(t):.1f}" y="{H - BOTTOM + 12}" font-size="9" text-anchor="middle">{_fmt(t)}</text>'
            )
        for t in _ticks(self.y0, self.y1):
            y = H - BOTTOM - (t - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)
            label = _fmt(10**t) if self.log_y else _fmt(t)
            out.append(f'<text x="{LEFT - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end">{label}</text>')
            out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        return out


def _legend(names: Sequence[str]) -> list[str]:
    out = []
    for i, name in enumerate(names[:12]):
        x, y = LEFT + 6 + (i % 3) * 140, TOP + 10 + (i // 3) * 11
        out.append(
            f'<rect x="{x}" y="{y - 7}" width="8" height="8" fill="{COLORS[i % len(COLORS)]}"/>'
            f'<text x="{x + 11}" y="{y}" font-size="9">{escape(name[:24])}</text>'
        )
    return out


def _svg(parts: list[str]) -> str:
    body = "".join(parts)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
        f'font-family="sans-serif">{body}</svg>'
    )


def line_chart(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    hlines: Sequence[tuple[float, str]] = (),
    marks: Sequence[Point] = (),
) -> str:
    """Lines per series, horizontal reference lines (e.g. alpha, control limits), and marked points (alarms)."""
    xs = [x for pts in series.values() for x, _ in pts if math.isfinite(x)]
    ys = [y for pts in series.values() for _, y in pts if math.isfinite(y)] + [y for y, _ in hlines]
    frame = _Frame(xs, ys, log_y)
    parts = frame.axes(title, xlabel, ylabel)
    for i, (name, pts) in enumerate(series.items()):
        path = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in pts if math.isfinite(x) and math.isfinite(y))
        if path:
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{COLORS[i % len(COLORS)]}" '
                f'stroke-width="1.2"><title>{escape(name)}</title></polyline>'
            )
    for y, label in hlines:
        parts.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{frame.py(y):.1f}" y2="{frame.py(y):.1f}" '
            f'stroke="#b00020" stroke-dasharray="4 3"><title>{escape(label)}</title></line>'
        )
    for x, y in marks:
        parts.append(f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="3" fill="#b00020"/>')
    return _svg(parts + _legend(list(series)))


def bar_chart(series: Mapping[str, Sequence[float]], *, title: str, xlabel: str, ylabel: str) -> str:
    """Grouped bars: one group per index, one bar per series."""
    n = max((len(v) for v in series.values()), default=0)
    top = max((v for vals in series.values() for v in vals), default=1.0) or 1.0
    frame = _Frame([0.0, float(max(n, 1))], [0.0, top], False)
    parts = frame.axes(title, xlabel, ylabel)
    width = (W - LEFT - RIGHT) / max(n, 1) / (len(series) + 1)
    for s, (name, values) in enumerate(series.items()):
        for i, v in enumerate(values):
            x = frame.px(i) + width * (s + 0.5)
            y = frame.py(v)
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{frame.py(0) - y:.1f}" '
                f'fill="{COLORS[s % len(COLORS)]}"><title>{escape(name)}: {_fmt(v)}</title></rect>'
            )
    return _svg(parts + _legend(list(series)))
