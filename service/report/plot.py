"""The answer-probability chart as inline SVG, drawn on the server (no JavaScript, prints as vectors).

One column per probe, grouped by probe kind and sorted by the probability before unlearning: a hollow
grey dot before, a filled dot after, joined by a line, so a long drop reads as "forgotten". Probes are
named by kind and position only. Built as a string of numbers and fixed words; anything else is escaped.
"""

from __future__ import annotations

from markupsafe import Markup, escape

WIDTH, HEIGHT = 960, 280
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 26, 44
GAP_SLOTS = 3  # empty columns between kinds


def _y(p: float) -> float:
    return TOP + (1.0 - p) * (HEIGHT - TOP - BOTTOM)


def answer_probability_svg(data: dict[str, dict[str, list[float]]]) -> Markup:
    """``data``: kind -> {"before": [...], "after": [...]} (equal lengths, probabilities in [0, 1])."""
    kinds = [(kind, section) for kind, section in data.items() if section.get("before")]
    total = sum(len(section["before"]) for _, section in kinds)
    slots = total + GAP_SLOTS * max(0, len(kinds) - 1)
    plot_w = WIDTH - LEFT - RIGHT
    step = plot_w / max(1, slots)
    radius = max(1.2, min(3.5, step * 0.38))
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" id="answer-probability-plot" role="img"'
        f' viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMidYMid meet"'
        f' aria-label="Answer probability of each of {total} probes before and after unlearning">',
        f"<title>Answer probability of each probe, before and after ({total} probes)</title>",
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = _y(tick)
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:.2f}</text>'
        )
    parts.append(
        f'<text class="axis" x="12" y="{(TOP + HEIGHT - BOTTOM) / 2:.1f}" text-anchor="middle"'
        f' transform="rotate(-90 12 {(TOP + HEIGHT - BOTTOM) / 2:.1f})">p(answer)</text>'
    )
    # Legend, top right.
    lx = WIDTH - RIGHT - 200
    parts.append(
        f'<circle class="before" cx="{lx}" cy="12" r="3.5"/><text class="legend" x="{lx + 8}" y="16">before</text>'
        f'<circle class="after" cx="{lx + 70}" cy="12" r="3.5"/><text class="legend" x="{lx + 78}" y="16">after unlearning</text>'
    )
    slot = 0
    for kind, section in kinds:
        name = escape(kind)
        pairs = sorted(zip(section["before"], section["after"], strict=True), key=lambda ba: -ba[0])
        first = slot
        parts.append(f'<g class="kind" data-kind="{name}">')
        for index, (before, after) in enumerate(pairs, start=1):
            x = LEFT + (slot + 0.5) * step
            yb, ya = _y(before), _y(after)
            parts.append(
                f'<g class="probe"><title>{name} #{index}: {before:.3f} before, {after:.3f} after</title>'
                f'<line class="drop" x1="{x:.1f}" y1="{yb:.1f}" x2="{x:.1f}" y2="{ya:.1f}"/>'
                f'<circle class="before" cx="{x:.1f}" cy="{yb:.1f}" r="{radius:.1f}"/>'
                f'<circle class="after" cx="{x:.1f}" cy="{ya:.1f}" r="{radius:.1f}"/></g>'
            )
            slot += 1
        middle = LEFT + (first + slot) / 2 * step
        parts.append(
            f'<text class="kind-label" x="{middle:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">'
            f"{name}</text>"
            f'<text class="kind-n" x="{middle:.1f}" y="{HEIGHT - BOTTOM + 33}" text-anchor="middle">'
            f"n = {len(pairs)}</text></g>"
        )
        slot += GAP_SLOTS
    parts.append("</svg>")
    return Markup("".join(parts))
