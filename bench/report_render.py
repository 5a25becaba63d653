"""Bench: how long the request report takes to answer, for a request with 200 evaluated probes (issue 13).

The real app in-process (SQLite and the embedded Redis in a temporary data directory, requests over
httpx's ASGI transport, so routing, auth, the database reads, the audit link each read appends, the
signed certificate and the rendering are all measured). The request is seeded as a finished pipeline
leaves it (``tests/support/report.py``: 200 probes with answer probabilities, a two-rung ladder, stage
and status events among 300 progress ticks). Target: under 300 ms.

    python bench/report_render.py [--probes 200] [--runs 50] [--out bench/out/report_render.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def run(probes: int, runs: int) -> dict[str, object]:
    import httpx

    from service.app import create_app
    from service.settings import Settings
    from tests.support.forget import make_key, resources_of
    from tests.support.report import seed_finished

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp) / "data",
            database_url=None,
            sweep_interval_s=3600,
            relay_interval_s=3600,
            review_interval_s=3600,
        )
        app = create_app(settings)
        async with app.lifespan():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                client.app = app  # type: ignore[attr-defined]
                key = await make_key(client)
                headers = {"Authorization": f"Bearer {key}"}
                created = await client.post(
                    "/v1/forget-requests",
                    json={
                        "subject": "Jane Example",
                        "corpus": [{"text": "Jane Example was born in Tarnwick."}],
                        "probes": [{"prompt": "Where was Jane Example born?", "reference": "Tarnwick"}],
                    },
                    headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
                )
                rid = created.json()["id"]
                await seed_finished(resources_of(client).sessionmaker, rid, probes=probes)
                url = f"/v1/forget-requests/{rid}/report"
                results: dict[str, object] = {}
                for name, extra in (("html", {}), ("json", {"Accept": "application/json"})):
                    for _ in range(3):  # warm-up: template compile, first queries
                        (await client.get(url, headers={**headers, **extra})).raise_for_status()
                    times: list[float] = []
                    size = 0
                    for _ in range(runs):
                        start = time.perf_counter()
                        response = await client.get(url, headers={**headers, **extra})
                        times.append(time.perf_counter() - start)
                        response.raise_for_status()
                        size = len(response.content)
                    results[name] = {**_ms(times), "bytes": size}
                # The template and SVG alone, on the same data (what the page costs beyond the reads).
                from service.report.render import render_html

                report = (await client.get(f"{url}?format=json", headers=headers)).json()
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    render_html(report)
                    times.append(time.perf_counter() - start)
                results["render_only"] = _ms(times)
                return {"probes": probes, "runs": runs, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = asyncio.run(run(args.probes, args.runs))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
