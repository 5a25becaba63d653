"""Audit chain tamper detection, the signed certificate, and the purge: no canary left anywhere."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from service.audit import chain
from service.audit.signing import verify as verify_signature
from service.forget import service as forget_service
from service.orchestration.sweeper import sweep_once
from service.settings import Settings
from tests.support.forget import CANARY, app_client, auth, drive, make_key, resources_of, submit


async def test_certificate_purge_and_canary(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings.model_copy(update={"heartbeat_interval_s": 0.2, "relay_interval_s": 3600})
    async with app_client(settings) as client:
        key = await make_key(client)
        corpus = [{"text": f"{CANARY} lives in Quillborough and writes letters."}]
        created = await submit(client, key, corpus=corpus, options={"retention_s": 0})
        assert (await drive(client, settings, created["id"]))["status"] == "ready"
        early = await client.get(created["url"] + "/certificate", headers=auth(key))
        assert early.status_code == 409
        resources = resources_of(client)
        async with resources.sessionmaker() as session:
            adapter = await forget_service.ready_adapter(session, created["id"])
            await forget_service.mark_deployed(session, created["id"], "v1", adapter.sha256, retention_s=0)
            await session.commit()
        report = await sweep_once(resources)
        assert created["id"] in report.purged
        cert = (await client.get(created["url"] + "/certificate", headers=auth(key))).json()
        public = (await client.get("/v1/certificates/public-key")).json()
        assert verify_signature(public["public_key"], cert["certificate"], cert["signature"])
        assert cert["certificate"]["deployed_version"] == "v1"
        assert cert["certificate"]["adapter_sha256"] == adapter.sha256
        forged = {**cert["certificate"], "deployed_version": "v2"}
        assert not verify_signature(public["public_key"], forged, cert["signature"])
        trail = (await client.get(created["url"] + "/audit", headers=auth(key))).json()
        actions = [e["action"] for e in trail["events"]]
        assert trail["chain_ok"] and "corpus.purged" in actions and "status.deployed" in actions
        # The canary is in no log line, no file and no table.
        assert not [r for r in caplog.records if CANARY in r.getMessage()]
        for path in settings.data_dir.rglob("*"):
            if path.is_file() and not path.name.startswith("redis"):
                assert CANARY.encode() not in path.read_bytes(), path
        async with resources.sessionmaker() as session:
            for table in ("forget_requests", "request_events", "idempotency_keys", "audit_events", "outbox"):
                rows = (await session.execute(text(f"SELECT * FROM {table}"))).all()
                assert CANARY not in repr(rows), table
        # The adapter stays after the purge (it is being served).
        assert Path(adapter.path).is_dir()  # noqa: ASYNC240


async def test_audit_verify_detects_tampering(settings: Settings) -> None:
    async with app_client(settings) as client:
        key = await make_key(client)
        for _ in range(3):
            await submit(client, key)
        resources = resources_of(client)
        async with resources.sessionmaker() as session:
            assert (await chain.verify(session)).ok
            await session.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
            await session.commit()
            result = await chain.verify(session)
            assert not result.ok and "event 2" in result.problems[0]
    cli = subprocess.run(  # noqa: ASYNC221 - the real CLI
        [sys.executable, "-m", "service.cli", "audit", "verify", "--data-dir", str(settings.data_dir)],
        capture_output=True,
        text=True,
        env={"OBLIVIATE_ENGINE": "none", "PATH": "/usr/bin:/bin"},
        cwd=Path(__file__).parents[2],
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "TAMPERED" in cli.stderr


async def test_deleting_the_newest_events_is_detected(settings: Settings) -> None:
    async with app_client(settings) as client:
        key = await make_key(client)
        await submit(client, key)
        async with resources_of(client).sessionmaker() as session:
            await session.execute(
                text("DELETE FROM audit_events WHERE seq = (SELECT MAX(seq) FROM audit_events)")
            )
            await session.commit()
            assert not (await chain.verify(session)).ok
