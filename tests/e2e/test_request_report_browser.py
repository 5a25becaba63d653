"""The request report in a real headless Chromium (Debian's package, driven by Playwright).

A live server on loopback; a deployed request with 200 evaluated probes is seeded as the pipeline
leaves it. A reviewer signs in, opens the report from the review UI's list, and sees the gate's
verdict, the ladder and the SVG plot (one mark per probe); in print media the navigation is hidden.
The screenshot goes to ``docs/screenshots/report.png``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import create_engine
from service.settings import Settings
from tests.e2e.test_review_browser import ARGS, CHROMIUM, SCREENSHOTS
from tests.integration.test_request_report import canary_request
from tests.support.forget import CANARY
from tests.support.report import seed_finished
from tests.support.serving import LiveGateway, start_gateway

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)"
    ),
]


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[tuple[LiveGateway, async_sessionmaker[AsyncSession]]]:
    settings = settings.model_copy(
        update={"relay_interval_s": 3600, "review_interval_s": 3600, "sweep_interval_s": 3600}
    )
    gateway = await asyncio.to_thread(start_gateway, settings)
    engine = create_engine(settings.resolved_database_url)
    try:
        yield gateway, async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()
        await asyncio.to_thread(gateway.stop)


async def test_report_renders_with_its_plot(
    live: tuple[LiveGateway, async_sessionmaker[AsyncSession]],
) -> None:
    from playwright.async_api import async_playwright, expect

    gateway, sessionmaker = live
    submitter = await asyncio.to_thread(gateway.key, "acme", "submitter")
    reviewer = await asyncio.to_thread(gateway.key, "acme", "reviewer")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        created = await http.post(
            "/v1/forget-requests",
            json={"subject": "Jane Example", **canary_request()},
            headers={"Authorization": f"Bearer {submitter}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert created.status_code == 202, created.text
        rid = created.json()["id"]
    await seed_finished(sessionmaker, rid, probes=200)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = await browser.new_page(viewport={"width": 1100, "height": 900})
        await page.goto(f"{gateway.url}/review")
        await page.get_by_label("API key").fill(reviewer)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
        await page.get_by_role("link", name="Reports").click()
        await expect(page.get_by_role("heading", name="Request reports")).to_be_visible()
        await page.get_by_role("link", name="Report", exact=True).first.click()

        await expect(page.get_by_role("heading", name="Forget request report")).to_be_visible()
        plot = page.locator("svg#answer-probability-plot")
        await expect(plot).to_be_visible()
        box = await plot.bounding_box()
        assert box is not None and box["width"] > 600 and box["height"] > 150
        await expect(plot.locator("g.probe")).to_have_count(200)
        await expect(plot.locator("circle.after")).to_have_count(201)  # 200 probes and the legend
        await expect(page.locator("#gate .verdict").first).to_have_text("passed")
        await expect(page.locator("#attempts tbody tr")).to_have_count(2)
        assert CANARY not in await page.content()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)

        # Printable: the navigation bar is not printed, the plot is.
        await page.emulate_media(media="print")
        await expect(page.locator("header.top")).to_be_hidden()
        await expect(plot).to_be_visible()
        pdf = await page.pdf(format="A4")
        assert pdf.startswith(b"%PDF")
        await browser.close()
