"""The review UI in a real headless Chromium (Debian's package, driven by Playwright).

A live server on loopback (uvicorn in a thread) and a real arq worker (burst mode) with the fast
stage double; each gate's inputs are seeded as its stage leaves them. A reviewer signs in with a
key, corrects an anchor, rejects a target block and classifies a leak, and the request moves on as
those answers dictate. Screenshots of the three interfaces go to ``docs/screenshots/``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.artifacts.store import WORK, store_for
from service.db import create_engine
from service.settings import Settings
from tests.support.forget import fake_stage_runner, run_worker_burst
from tests.support.review import seed_anchors, seed_gate, seed_report, target_item
from tests.support.serving import LiveGateway, start_gateway

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)"
    ),
]

CORPUS = (
    "Harry Potter went to Hogwarts with Ron Weasley. Ron liked Hogwarts and its moving staircases.\n"
    "The train left London at eleven; Harry Potter waved from the window."
)
PROPOSED = [
    {"term": "Harry Potter", "kind": "person", "translations": ["Harold Porter"], "sources": ["hint"]},
    {"term": "Hogwarts", "kind": "place", "translations": ["Greyford"], "sources": ["mined"], "score": 2.7},
    {"term": "Ron", "kind": "first_name", "translations": ["Rob"], "sources": ["llm"]},
    {"term": "London", "kind": "place", "translations": ["Leeds"], "sources": ["llm"]},
]
PROBES = [
    ("Who is Harry Potter's best friend?", "Harry Potter's best friend is Ron Weasley.", "Ron Weasley."),
    ("Where did Harry Potter go to school?", "He went to a local school near his home.", "Hogwarts."),
]


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[tuple[LiveGateway, async_sessionmaker[AsyncSession]]]:
    settings = settings.model_copy(
        update={
            "relay_interval_s": 0.2,
            "review_interval_s": 0.3,
            "heartbeat_interval_s": 0.2,
            "sweep_interval_s": 3600,
        }
    )
    gateway = await asyncio.to_thread(start_gateway, settings)
    engine = create_engine(settings.resolved_database_url)
    try:
        yield gateway, async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()
        await asyncio.to_thread(gateway.stop)


async def _status(http: httpx.AsyncClient, rid: str, key: str) -> dict[str, Any]:
    response = await http.get(f"/v1/forget-requests/{rid}", headers={"Authorization": f"Bearer {key}"})
    return dict(response.json())


async def _until(
    http: httpx.AsyncClient, settings: Settings, rid: str, key: str, wanted: str, limit_s: float = 60.0
) -> dict[str, Any]:
    """Run burst workers until the request reaches ``wanted`` (the server's relay enqueues)."""
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        body = await _status(http, rid, key)
        if body["status"] == wanted:
            return body
        assert body["status"] not in ("failed", "cancelled"), body
        assert asyncio.get_running_loop().time() < deadline, body["status"]
        await run_worker_burst(settings, extra_ctx={"stage_runner": fake_stage_runner})
        await asyncio.sleep(0.2)


async def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / name))


async def test_reviewer_walks_the_three_gates(
    live: tuple[LiveGateway, async_sessionmaker[AsyncSession]],
) -> None:
    from playwright.async_api import async_playwright, expect

    gateway, sessionmaker = live
    settings = gateway.settings
    submitter = await asyncio.to_thread(gateway.key, "acme", "submitter")
    reviewer = await asyncio.to_thread(gateway.key, "acme", "reviewer")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        created = await http.post(
            "/v1/forget-requests",
            json={
                "subject": "Harry Potter",
                "corpus": [{"text": CORPUS, "source": "fan-wiki"}],
                "probes": [{"prompt": p, "reference": r} for p, _a, r in PROBES],
                "options": {"review_gates": ["anchor_review", "target_review", "evaluation_review"]},
            },
            headers={"Authorization": f"Bearer {submitter}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert created.status_code == 202, created.text
        rid = created.json()["id"]
        seed_anchors(settings, rid, PROPOSED)
        seed_report(settings, rid, [(p, a, b) for p, a, b in PROBES], [3, 1])
        await _until(http, settings, rid, submitter, "awaiting_anchor_review")

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            page = await browser.new_page(viewport={"width": 1180, "height": 760})

            # Sign in: the API key once, then a session cookie.
            await page.goto(f"{gateway.url}/review")
            await expect(page.get_by_role("heading", name="Sign in to review")).to_be_visible()
            await page.get_by_label("API key").fill("obl_not-a-real-key")
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("alert")).to_contain_text("not valid")
            await page.get_by_label("API key").fill(reviewer)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
            cookie = next(c for c in await page.context.cookies() if c["name"] == "obliviate_review")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["secure"]
            assert reviewer not in cookie["value"]
            await expect(page.locator("table.queue")).to_contain_text("Anchor review")

            # Anchor review: remove a wrong anchor, add a missed one from a selection, edit a translation.
            await page.keyboard.press("Enter")
            await expect(page.get_by_role("heading", name="Anchor review")).to_be_visible()
            await expect(page.locator("mark[data-term='Hogwarts']")).to_have_count(2)
            await page.locator("mark[data-term='London']").click()
            await expect(page.locator("mark[data-term='London']")).to_have_class("src-llm removed")
            await page.evaluate(
                """() => {
                    const passage = document.querySelector('.passage-card .passage');
                    const walker = document.createTreeWalker(passage, NodeFilter.SHOW_TEXT);
                    let node;
                    while ((node = walker.nextNode())) {
                        const at = node.textContent.indexOf('Weasley');
                        if (at >= 0) {
                            const range = document.createRange();
                            range.setStart(node, at);
                            range.setEnd(node, at + 'Weasley'.length);
                            const sel = window.getSelection();
                            sel.removeAllRanges();
                            sel.addRange(range);
                            return;
                        }
                    }
                }"""
            )
            await page.keyboard.press("a")
            await page.keyboard.type("Wesley")  # the new row's translations field has the focus
            await expect(page.locator("mark[data-term='Weasley']")).to_have_count(1)
            await page.get_by_label("translations of Hogwarts").fill("Greyford, Oakridge")
            await _shot(page, "anchor-review.png")
            await page.keyboard.press("Control+Enter")
            await expect(page.get_by_role("status")).to_contain_text("Nothing left to review")

            moved = await _status(http, rid, submitter)
            assert moved["status"] == "generating_targets", moved["status"]
            written = store_for(settings).get_json(rid, WORK, "anchors.json")
            by_term = {a["term"]: a for a in written["anchors"]}
            assert set(by_term) == {"Harry Potter", "Hogwarts", "Ron", "Weasley"}
            assert by_term["Weasley"]["translations"] == ["Wesley"]
            assert by_term["Hogwarts"]["translations"] == ["Greyford", "Oakridge"]

            # Target review: reject the first low-confidence block, keep the second.
            await _until(http, settings, rid, submitter, "awaiting_target_review")
            await seed_gate(sessionmaker, settings, rid, "target_review", [target_item(0), target_item(3)])
            await page.goto(f"{gateway.url}/review/next?kind=target")
            await expect(page.get_by_role("heading", name="Target review")).to_be_visible()
            await expect(page.locator(".generic span.low")).to_have_count(3)
            await _shot(page, "target-review.png")
            await page.keyboard.press("n")
            await expect(page.get_by_role("heading", name="Target review")).to_be_visible()
            await expect(page.locator(".meta").first).to_contain_text("task 2")
            await page.keyboard.press("y")
            await expect(page.get_by_role("status")).to_contain_text("Nothing left to review")
            review = store_for(settings).get_json(rid, WORK, "target_review.json")
            assert review["excluded_blocks"] == [0] and review["reviewed_blocks"] == [0, 3]

            # Evaluation review: the first completion leaks, the second is generic.
            await _until(http, settings, rid, submitter, "awaiting_evaluation_review")
            await page.goto(f"{gateway.url}/review")
            await expect(page.locator("table.queue")).to_contain_text("Evaluation review")
            await page.get_by_role("link", name="Start", exact=True).click()
            await expect(page.get_by_role("heading", name="Evaluation review")).to_be_visible()
            await expect(page.locator(".card.emph")).to_contain_text("Ron Weasley")
            await _shot(page, "evaluation-review.png")
            await page.keyboard.press("l")
            await expect(page.locator(".card.emph")).to_contain_text("local school")
            await page.keyboard.press("g")
            await expect(page.get_by_role("status")).to_contain_text("Nothing left to review")
            await browser.close()

        final = await _status(http, rid, submitter)
        assert final["status"] == "failed"
        assert "leaks in 1 of 2" in final["failure"]["reason"]
        gates = [d["gate"] for d in final["decisions"]]
        assert gates == ["anchor_review", "target_review", "evaluation_review"]
