"""``--html``: the report as one self-contained HTML file, its plots drawn in inline SVG.

No script and nothing fetched: the file opens as it is, offline, in any browser.
The plots are hand-written SVG (a few lines each), so the benchmark needs no
plotting library: the TTFT and inter-event gap distributions (CDFs), and per
second the token events, the streams open and the failed requests.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from streamapi.bench.report import format_report

_WIDTH, _HEIGHT = 560, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 16, 24, 40
_COLOURS = ("#3b7ddd", "#e07b39", "#2f9e63", "#b042a8")

Series = tuple[str, Sequence[tuple[float, float]]]


def render_html(reports: Sequence[tuple[str, dict[str, Any]]], title: str) -> str:
    """One page for one or more runs (``[(name, report)]``), their plots side by side."""
    return render_sections([("", reports)], title)


def render_sections(
    sections: Sequence[tuple[str, Sequence[tuple[str, dict[str, Any]]]]], title: str
) -> str:
    """One page of several sections (``[(heading, [(name, report)])]``): each compares its
    runs side by side, as ``render_html`` does for one (``bench/run.py --html``)."""
    names = sorted({name for _, reports in sections for name, _ in reports})
    body = "".join(_section(heading, reports) for heading, reports in sections)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(', '.join(names))}</p>"
        f"{body}</body></html>\n"
    )


def _section(heading: str, reports: Sequence[tuple[str, dict[str, Any]]]) -> str:
    plots = [
        _plot(
            "Time to first token (CDF)",
            [(name, _points(report["cdf"]["ttft_ms"])) for name, report in reports],
            "ms",
            "fraction of requests",
            log_x=True,
        ),
        _plot(
            "Inter-event gap (CDF)",
            [(name, _points(report["cdf"]["itl_ms"])) for name, report in reports],
            "ms",
            "fraction of gaps",
            log_x=True,
        ),
        _plot(
            "Throughput",
            [(name, _rate(report["timeline"], "events")) for name, report in reports],
            "s",
            "token events/s",
        ),
        _plot(
            "Open streams",
            [(name, _level(report["timeline"], "open_streams")) for name, report in reports],
            "s",
            "streams",
        ),
        _plot(
            "Errors",
            [(name, _rate(report["timeline"], "failed")) for name, report in reports],
            "s",
            "failed requests/s",
        ),
    ]
    texts = "".join(
        f"<h3>{html.escape(name)}</h3><pre>{html.escape(format_report(report))}</pre>"
        for name, report in reports
    )
    head = f"<h2>{html.escape(heading)}</h2>" if heading else ""
    figures = "<h2>Figures</h2>" if not heading else "<h3>Figures</h3>"
    return f'{head}<div class="plots">{"".join(plots)}</div>{figures}{texts}'


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2433}"
    ".plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(34rem,1fr));gap:1rem}"
    "figure{margin:0;border:1px solid #d9dee8;border-radius:6px;padding:.5rem}"
    "svg{width:100%;height:auto}svg text{font-size:11px;fill:#5b6478}"
    "pre{background:#f6f7fa;padding:.6rem;overflow:auto}"
)


def _points(pairs: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    return [(pair[0], pair[1]) for pair in pairs]


def _rate(timeline: dict[str, list[float]], key: str) -> list[tuple[float, float]]:
    """Per second between two samples, from the totals so far."""
    times, totals = timeline["t_s"], timeline[key]
    return [
        (times[i], (totals[i] - totals[i - 1]) / (times[i] - times[i - 1]))
        for i in range(1, len(times))
        if times[i] > times[i - 1]
    ]


def _level(timeline: dict[str, list[float]], key: str) -> list[tuple[float, float]]:
    return list(zip(timeline["t_s"], timeline[key], strict=True))


def _plot(
    title: str, series: list[Series], x_unit: str, y_label: str, *, log_x: bool = False
) -> str:
    xs = [x for _, points in series for x, _ in points if not log_x or x > 0]
    ys = [y for _, points in series for _, y in points]
    body = [f'<text x="{_LEFT}" y="16" font-weight="600">{html.escape(title)}</text>']
    if not xs:
        body.append(f'<text x="{_WIDTH / 2}" y="{_HEIGHT / 2}" text-anchor="middle">no data</text>')
        return _figure(title, body)
    scale_x = _LogScale(min(xs), max(xs)) if log_x else _LinearScale(0.0, max(xs))
    scale_y = _LinearScale(0.0, max(max(ys), 1e-9))
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM
    bottom = _TOP + plot_h
    body.append(
        f'<path d="M{_LEFT},{_TOP} V{bottom} H{_LEFT + plot_w}" stroke="#9aa3b5" fill="none"/>'
    )
    for value in scale_x.ticks():
        x = _LEFT + scale_x.at(value) * plot_w
        body.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#9aa3b5"/>'
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_label(value)}</text>'
        )
    for value in scale_y.ticks():
        y = bottom - scale_y.at(value) * plot_h
        body.append(
            f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}" stroke="#eef1f6"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(value)}</text>'
        )
    body.append(
        f'<text x="{_LEFT + plot_w}" y="{_HEIGHT - 6}" text-anchor="end">{x_unit}</text>'
        f'<text x="12" y="{_TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_TOP + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    for index, (name, points) in enumerate(series):
        colour = _COLOURS[index % len(_COLOURS)]
        coords = " ".join(
            f"{_LEFT + scale_x.at(x) * plot_w:.1f},{bottom - scale_y.at(y) * plot_h:.1f}"
            for x, y in points
            if not log_x or x > 0
        )
        body.append(
            f'<polyline class="series" points="{coords}" fill="none" stroke="{colour}" '
            f'stroke-width="2"><title>{html.escape(name)}</title></polyline>'
        )
        if len(series) > 1:
            y = _TOP + 4 + 14 * index
            body.append(
                f'<rect x="{_LEFT + plot_w - 140}" y="{y}" width="10" height="10" fill="{colour}"/>'
                f'<text x="{_LEFT + plot_w - 126}" y="{y + 9}">{html.escape(name)}</text>'
            )
    return _figure(title, body)


def _figure(title: str, body: list[str]) -> str:
    return (
        f'<figure><svg viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" '
        f'aria-label="{html.escape(title)}">{"".join(body)}</svg></figure>'
    )


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.1e}"


class _LinearScale:
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high if high > low else low + 1

    def at(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)

    def ticks(self) -> list[float]:
        raw = (self.high - self.low) / 5
        step = 10 ** math.floor(math.log10(raw))
        step *= next(m for m in (1, 2, 5, 10) if raw <= step * m)
        return [self.low + step * i for i in range(int((self.high - self.low) / step) + 1)]


class _LogScale:
    def __init__(self, low: float, high: float) -> None:
        # At least a factor of two wide, so that a narrow distribution is not a vertical line.
        self.low, self.high = math.log10(low), math.log10(max(high, low * 2))

    def at(self, value: float) -> float:
        return (math.log10(value) - self.low) / (self.high - self.low)

    def ticks(self) -> list[float]:
        # 1, 2 and 5 times each power of ten in range: a narrow range still gets ticks.
        return [
            step * 10.0**exponent
            for exponent in range(math.floor(self.low), math.ceil(self.high) + 1)
            for step in (1, 2, 5)
            if self.low - 1e-9 <= math.log10(step * 10.0**exponent) <= self.high + 1e-9
        ]
