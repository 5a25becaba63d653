"""Fill the report template: one self-contained HTML page (inline CSS and SVG, no script), printable.

The environment and the template are built once and kept (compiling is the slow part). The page's CSP
admits exactly the inline stylesheet (by its hash) and nothing else, so a saved copy renders the same.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, Template, select_autoescape
from markupsafe import Markup

from service.report.plot import answer_probability_svg

HERE = Path(__file__).parent


@cache
def _css() -> str:
    return (HERE / "static" / "report.css").read_text(encoding="utf-8")


@cache
def _template() -> Template:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env.get_template("report.html")


def _pct(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    return f"{float(value) * 100:.{digits}f}%"


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{float(value):.{digits}g}"


def headers() -> dict[str, str]:
    digest = base64.b64encode(hashlib.sha256(_css().encode("utf-8")).digest()).decode("ascii")
    return {
        "Cache-Control": "no-store",
        "Content-Security-Policy": f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:;"
        " frame-ancestors 'none'; form-action 'none'; base-uri 'none'",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def render_html(report: dict[str, Any], *, nav: list[tuple[str, str]] | None = None) -> str:
    """The page for ``report`` (from ``service.report.data.build``); ``nav``: (label, href) links."""
    probabilities = report.get("answer_probabilities")
    plot = answer_probability_svg(probabilities) if probabilities else None
    return _template().render(r=report, plot=plot, css=Markup(_css()), nav=nav or [])
