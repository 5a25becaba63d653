"""Artifacts in an S3-compatible object store, personal data sealed under a per-request key.

Real parts: moto's ``ThreadedMotoServer`` (a local S3 server over HTTP, driven by boto3), the app over
HTTP, a real arq worker with the fake stage runner, SQLite, the test Redis, the real purge pass.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from service.artifacts import envelope
from service.artifacts.keys import KeyRing
from service.artifacts.models import DataKey
from service.artifacts.s3 import AdapterIntegrityError, DataKeyMissing, S3Store
from service.artifacts.store import ADAPTER, INPUT, SPEC_FILE, WORK, store_for
from service.db.base import utcnow
from service.deployments.services import deploy
from service.deployments.storage import dir_hash
from service.forget.models import ForgetRequest
from service.orchestration.purge import purge_pass
from service.settings import Settings
from tests.support.forget import app_client, auth, drive, fake_stage_runner, make_key, resources_of

pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

SECRET = f"Quillfeather{uuid.uuid4().hex[:10]}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3 server for the module; moto's dummy credentials in the environment."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", endpoint)
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        patch.delenv("AWS_PROFILE", raising=False)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"obliviate-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


def _s3() -> Any:
    import boto3

    return boto3.client("s3")


def _objects(bucket: str, prefix: str) -> dict[str, bytes]:
    client = _s3()
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def leaky_runner(inp: Any) -> Any:
    """The fake stage runner, plus what real stages do: work files that quote the corpus."""
    corpus = " ".join(inp.spec.get("documents", []))
    (inp.work_dir / f"{inp.stage}.json").write_text(json.dumps({"quote": corpus}))
    (inp.work_dir / "nested").mkdir(exist_ok=True)
    (inp.work_dir / "nested" / "targets.txt").write_text(corpus)
    out = fake_stage_runner(inp)
    if inp.stage == "unlearn":  # a servable adapter folder has its config too
        (inp.adapter_dir / "adapter_config.json").write_text('{"r": 4, "peft_type": "LORA"}')
    return out


async def test_a_request_through_the_object_store_is_sealed_content_addressed_and_shredded(
    settings: Settings, bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/obliviate"
    settings = settings.model_copy(
        update={"artifacts_url": url, "engine": "none", "sweep_interval_s": 3600, "relay_interval_s": 3600}
    )
    async with app_client(settings) as client:
        resources = resources_of(client)
        store = resources.extras["artifacts"]
        assert isinstance(store, S3Store)
        key = await make_key(client)
        body = {
            "subject": "Zebulon Example",
            "corpus": [{"text": f"{SECRET} went to Hogwarts with Ron.", "source": "doc-1"}],
            "hints": [{"term": SECRET, "kind": "person", "translations": ["Harold Porter"]}],
            "probes": [{"prompt": f"Who is {SECRET}?", "reference": SECRET}],
        }
        response = await client.post("/v1/forget-requests", json=body, headers=auth(key, str(uuid.uuid4())))
        assert response.status_code == 202, response.text
        rid = response.json()["id"]
        state = await drive(client, settings, rid, stage_runner=leaky_runner)
        assert state["status"] not in {"failed", "queued"}, state

        # The corpus and every work file are in the bucket, sealed: no plaintext in any raw object.
        request_objects = _objects(bucket, f"obliviate/requests/{rid}/")
        spec_key = f"obliviate/requests/{rid}/{INPUT}/{SPEC_FILE}"
        assert spec_key in request_objects
        assert f"obliviate/requests/{rid}/{WORK}/nested/targets.txt" in request_objects
        assert f"obliviate/requests/{rid}/{WORK}/reinforce.json" in request_objects
        for name, raw in request_objects.items():
            assert raw.startswith(envelope.MAGIC), name
            assert SECRET.encode() not in raw, name
        # ... and read back through the store (decrypted with the key from the database).
        assert SECRET in store.get_json(rid, INPUT, SPEC_FILE)["documents"][0]
        # The worker's scratch copy went with the job.
        assert not (settings.data_dir / "scratch" / rid).exists()

        # The adapter: content-addressed, plain (not personal data), complete with its manifest.
        async with resources.sessionmaker() as session:
            row = await session.get(ForgetRequest, rid)
            assert row is not None
            adapter_ref = row.adapter_path
        assert adapter_ref is not None and adapter_ref.startswith(f"{url}/adapters/")
        digest = adapter_ref.rsplit("/", 1)[1]
        adapter_objects = _objects(bucket, f"obliviate/adapters/{digest}")
        weights_key = f"obliviate/adapters/{digest}/adapter_model.safetensors"
        assert adapter_objects[weights_key] == b"fake-weights-" + rid.encode()
        manifest = json.loads(adapter_objects[f"obliviate/adapters/{digest}.json"])
        assert manifest["dir_hash"] == digest

        # Read back on another host (empty data directory): downloaded, hash-checked, same content.
        other = S3Store(url, tmp_path / "other-host", KeyRing(settings.resolved_database_url))
        local = other.adapter_dir(adapter_ref)
        assert dir_hash(local) == digest
        assert (local / "adapter_model.safetensors").read_bytes() == b"fake-weights-" + rid.encode()

        # A deploy on this replica loads it from the bucket into the content-addressed folder.
        assert state["status"] == "ready", state
        outcome = await deploy(resources, rid, principal=None)
        assert outcome.version is not None
        assert outcome.version.path == str(settings.data_dir / "adapters" / digest)
        assert dir_hash(Path(outcome.version.path)) == digest

        # Immutable: publishing the same content again writes nothing; the objects stay as they were.
        before = _s3().head_object(Bucket=bucket, Key=weights_key)
        assert store.publish_adapter(local) == adapter_ref
        after = _s3().head_object(Bucket=bucket, Key=weights_key)
        assert (after["ETag"], after["LastModified"]) == (before["ETag"], before["LastModified"])
        # An altered object is refused by a reader that has no verified copy yet.
        _s3().put_object(Bucket=bucket, Key=weights_key, Body=b"tampered")
        third = S3Store(url, tmp_path / "third-host", KeyRing(settings.resolved_database_url))
        with pytest.raises(AdapterIntegrityError):
            third.adapter_dir(adapter_ref)
        assert not (tmp_path / "third-host" / "adapters" / digest).exists()

        # A copy of the sealed corpus, as a backup of the bucket would hold it.
        backup = request_objects[spec_key]
        data_key = store.keys.get(rid)
        assert data_key is not None
        assert SECRET.encode() in envelope.open_sealed(data_key, rid, f"{INPUT}/{SPEC_FILE}", backup)
        del data_key

        # The purge: blobs and the key.
        async with resources.sessionmaker() as session:
            await session.execute(
                update(ForgetRequest)
                .where(ForgetRequest.id == rid)
                .values(purge_after=utcnow() - timedelta(seconds=1))
            )
            await session.commit()
        report = await purge_pass(resources, store)
        assert rid in report.purged, report
        assert _objects(bucket, f"obliviate/requests/{rid}/") == {}
        async with resources.sessionmaker() as session:
            left = (await session.execute(select(DataKey).where(DataKey.request_id == rid))).all()
        assert left == []
        assert store.keys.get(rid) is None
        # The adapter stays (the served model may need it).
        assert weights_key in _objects(bucket, f"obliviate/adapters/{digest}")

        # The backup restored into the bucket cannot be opened: the key is gone, and no other
        # request's key opens it either.
        _s3().put_object(Bucket=bucket, Key=spec_key, Body=backup)
        with pytest.raises(DataKeyMissing):
            store.get_json(rid, INPUT, SPEC_FILE)
        with pytest.raises(envelope.EnvelopeError):
            envelope.open_sealed(envelope.new_key(), rid, f"{INPUT}/{SPEC_FILE}", backup)
        # A late write to a shredded request fails rather than minting a new key.
        with pytest.raises(DataKeyMissing):
            store.put_json(rid, WORK, "late.json", {"quote": SECRET})
        assert store.keys.get(rid) is None


async def test_work_area_sync_between_hosts_and_orphans(
    settings: Settings, bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/p"
    settings = settings.model_copy(
        update={"artifacts_url": url, "sweep_interval_s": 3600, "relay_interval_s": 3600, "orphan_grace_s": 0}
    )
    async with app_client(settings) as client:
        resources = resources_of(client)
        api = store_for(settings)
        assert isinstance(api, S3Store)
        worker = S3Store(url, tmp_path / "worker-host", KeyRing(settings.resolved_database_url))
        rid = "fr_orphan" + uuid.uuid4().hex[:8]
        api.put_json(rid, INPUT, SPEC_FILE, {"documents": [SECRET]})

        # The worker stages the area, writes, saves; the API host pulls the change.
        work = worker.local_dir(rid, WORK)
        (work / "stage").mkdir()
        (work / "stage" / "out.json").write_text(json.dumps({"q": SECRET}))
        (work / ".tmp-partial").write_text("ignored")
        assert worker.save_outputs(rid, None) is None
        assert sorted(_objects(bucket, f"p/requests/{rid}/{WORK}/")) == [
            f"p/requests/{rid}/{WORK}/stage/out.json"
        ]
        pulled = api.local_dir(rid, WORK)
        assert json.loads((pulled / "stage" / "out.json").read_text()) == {"q": SECRET}
        # A reviewer's edit through the API is seen by the worker's next pull; a file the worker
        # removed is removed from the bucket, the reviewer's file is not.
        api.put_json(rid, WORK, "anchors.json", {"reviewed": True})
        work = worker.local_dir(rid, WORK)
        assert json.loads((work / "anchors.json").read_text()) == {"reviewed": True}
        (work / "stage" / "out.json").unlink()
        worker.sync(rid, WORK)
        assert sorted(_objects(bucket, f"p/requests/{rid}/{WORK}/")) == [
            f"p/requests/{rid}/{WORK}/anchors.json"
        ]
        worker.release(rid)
        assert not (tmp_path / "worker-host" / "scratch" / rid).exists()
        # Adapters are never written into a request's sealed areas.
        assert api.local_dir(rid, ADAPTER).is_dir()

        # No request row: an orphan. The purge pass deletes its objects, its key and local copies.
        report = await purge_pass(resources, api)
        assert rid in report.orphans
        assert _objects(bucket, f"p/requests/{rid}/") == {}
        assert api.keys.get(rid) is None
        assert not (settings.data_dir / "scratch" / rid).exists()
        # The other host drops its copies of a shredded request on its next pass.
        worker.local_dir(rid, WORK)  # nothing left to pull: an empty scratch folder
        assert rid in worker.prune_local()


def test_settings_accept_only_s3_urls() -> None:
    assert Settings(artifacts_url="s3://bucket/some/prefix/").artifacts_url == "s3://bucket/some/prefix"
    for bad in ("http://bucket/x", "s3:///x", "/tmp/artifacts"):
        with pytest.raises(ValueError, match="s3://bucket/prefix"):
            Settings(artifacts_url=bad)
    assert Settings(artifacts_url="").artifacts_url is None
