"""The request report over HTTP: HTML by default, the same data as JSON, tenant-scoped, no corpus text.

A request whose corpus, hints, probes and retain examples carry a canary string is seeded as a deployed
request with 200 evaluated probes; neither the page nor the JSON may contain the canary.
"""

from __future__ import annotations

import re
from typing import Any

from service.settings import Settings
from tests.support.forget import CANARY, app_client, auth, make_key, resources_of, submit
from tests.support.report import seed_finished


def _quiet(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"sweep_interval_s": 3600, "relay_interval_s": 3600, "review_interval_s": 3600}
    )


def canary_request() -> dict[str, Any]:
    return {
        "corpus": [{"text": f"Jane Example lives at {CANARY} street.", "source": f"src-{CANARY}"}],
        "qa_pairs": [{"question": f"Where does Jane live? {CANARY}", "answer": CANARY}],
        "hints": [{"term": CANARY, "kind": "other", "translations": ["Someplace"]}],
        "probes": [{"prompt": f"Where is {CANARY}?", "reference": CANARY}],
        "retain_examples": [f"Other text {CANARY}"],
    }


async def test_report_html_and_json_tenant_scoped_without_corpus_text(settings: Settings) -> None:
    async with app_client(_quiet(settings)) as client:
        key = await make_key(client)
        other = await make_key(client, tenant="other")
        created = await submit(client, key, **canary_request())
        rid = created["id"]
        await seed_finished(resources_of(client).sessionmaker, rid, probes=200)
        url = f"/v1/forget-requests/{rid}/report"

        page = await client.get(url, headers=auth(key))
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src" not in page.headers["content-security-policy"]  # no script at all
        html = page.text
        assert CANARY not in html
        assert "<script" not in html
        assert 'id="answer-probability-plot"' in html and html.count('class="probe"') == 200
        assert "Jane Example" in html  # the subject, as the request view shows it
        assert created["corpus"]["sha256"] in html
        assert "@media print" in html  # printable: the stylesheet is inline
        for text in ("Escalation ladder", "Leak rates by probe kind", "Earlier requests re-checked"):
            assert text in html

        as_json = await client.get(url, headers={**auth(key), "Accept": "application/json"})
        assert as_json.status_code == 200 and as_json.headers["content-type"].startswith("application/json")
        by_query = await client.get(f"{url}?format=json", headers=auth(key))
        assert by_query.status_code == 200
        body = as_json.json()
        assert CANARY not in as_json.text and CANARY not in by_query.text
        assert body["request"]["id"] == rid and body["request"]["subject"] == "Jane Example"
        assert body["asked"]["probes"] == 1 and body["asked"]["hints"] == 1
        assert body["acceptance"]["verdict"] == "passed"
        ladder = body["acceptance"]["attempts"]
        assert [a["escalation"] for a in ladder] == [0, 1] and [a["passed"] for a in ladder] == [False, True]
        assert ladder[0]["failures"][0]["check"] == "probe_leaks"
        assert body["acceptance"]["thresholds"]["max_heldout_leak_rate"] == 0.02
        probabilities = body["answer_probabilities"]
        assert sum(len(k["before"]) for k in probabilities.values()) == 200
        assert all(len(k["before"]) == len(k["after"]) for k in probabilities.values())
        kinds = {row["kind"] for row in body["leak_rates"]}
        assert {"probe", "original", "paraphrase", "inverted", "completion", "ranking"} <= kinds
        assert body["quality"]["retain_rouge_after"] == 0.9 and body["quality"]["kl_general"] == 0.0123
        assert body["earlier"] == {"n": 12, "leaks_after": 0}
        assert body["certificate"]["available"] is True and body["certificate"]["signature"]
        assert body["audit"]["chain_ok"] is True and re.fullmatch(
            r"[0-9a-f]{64}", body["audit"]["head"]["hash"]
        )
        # The head as of each read (reading appends an evidence link, so it moves between reads).
        assert re.search(r'id="audit-head">[0-9a-f]{64}<', html)
        # The timeline has stage and status changes, not the progress ticks.
        kinds_seen = {e["kind"] for e in body["timeline"]}
        assert "progress" not in kinds_seen and {"stage", "status", "acceptance"} <= kinds_seen

        # Reading the report is audited, like the audit trail and the certificate.
        trail = (await client.get(f"/v1/forget-requests/{rid}/audit", headers=auth(key))).json()
        assert "evidence.report" in {e["action"] for e in trail["events"]}

        # Another tenant sees nothing; no key, no report.
        assert (await client.get(url, headers=auth(other))).status_code == 404
        assert (await client.get(f"{url}?format=json", headers=auth(other))).status_code == 404
        assert (await client.get(url)).status_code == 401
        assert (
            await client.get("/v1/forget-requests/fr_missing/report", headers=auth(key))
        ).status_code == 404
        assert (await client.get(f"{url}?format=xml", headers=auth(key))).status_code in (400, 422)


async def test_report_of_a_fresh_request_says_what_is_not_there_yet(settings: Settings) -> None:
    async with app_client(_quiet(settings)) as client:
        key = await make_key(client)
        rid = (await submit(client, key))["id"]
        body = (await client.get(f"/v1/forget-requests/{rid}/report?format=json", headers=auth(key))).json()
        assert body["acceptance"]["verdict"] == "pending" and body["acceptance"]["attempts"] == []
        assert body["answer_probabilities"] is None and body["certificate"]["available"] is False
        html = (await client.get(f"/v1/forget-requests/{rid}/report", headers=auth(key))).text
        assert "answer-probability-plot" not in html and "Not evaluated yet" in html


async def test_review_ui_lists_and_shows_reports_of_its_tenant_only(settings: Settings) -> None:
    import httpx

    from tests.integration.test_review_web import _sign_in

    async with app_client(_quiet(settings)) as client:
        key = await make_key(client)
        mine = (await submit(client, key, **canary_request()))["id"]
        await seed_finished(resources_of(client).sessionmaker, mine, probes=20)
        theirs = (await submit(client, await make_key(client, tenant="other")))["id"]
        reviewer = await make_key(client, role="reviewer")
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as web:
            assert (await web.get("/review/reports")).status_code == 303  # signed out
            await _sign_in(web, reviewer)
            listing = await web.get("/review/reports")
            assert listing.status_code == 200
            assert f"/review/requests/{mine}/report" in listing.text and theirs not in listing.text
            page = await web.get(f"/review/requests/{mine}/report")
            assert page.status_code == 200 and 'id="answer-probability-plot"' in page.text
            assert CANARY not in page.text and CANARY not in listing.text
            foreign = await web.get(f"/review/requests/{theirs}/report")
            assert foreign.status_code == 303 and foreign.headers["location"] == "/review/reports"
