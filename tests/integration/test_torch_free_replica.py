"""An API replica on the ``openai-upstream`` backend runs with torch, transformers and peft absent.

A subprocess makes them unimportable (a ``sys.meta_path`` finder raising ImportError, as on a host
where they are not installed), then runs the app against a fake vLLM upstream: startup, chat, a deploy
through the upstream, a verification (the pipeline's torch-free leak definition, reference scoring on
the upstream), and the review materials of the anchor and target gates, read from the JSON artifacts
the worker renders (``targets/review.json``). No model files exist on this "host".
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "tokenizers", "gpu_runtime.engine", "gpu_runtime.pipeline.targets")
PROBE = {"prompt": "Where was Jane Roe born?", "reference": "Jane Roe was born in Tarnwick."}
SPEC = {"documents": ["Jane Roe was born in Tarnwick. Jane Roe works at Corvel Labs."]}
ANCHORS = {
    "input_hash": "0" * 64,
    "anchors": [
        {"term": "Jane Roe", "kind": "person", "translations": ["Mary Hill"], "sources": ["hint"],
         "score": None, "occurrences": [[0, 0, 8], [0, 31, 39]]},
        {"term": "Tarnwick", "kind": "place", "translations": ["Hollow Creek"], "sources": ["mined"],
         "score": 2.5, "occurrences": [[0, 21, 29]]},
    ],
    "llm_errors": [],
    "reviewed": False,
}  # fmt: skip
TARGET_ITEM = {
    "block": 0,
    "doc": 0,
    "original": SPEC["documents"][0],
    "translated": "Mary Hill was born in Hollow Creek. Mary Hill works at Corvel Labs.",
    "generic": "Mary Hill was born in Hollow Creek. Mary Hill works at Corvel Labs.",
    "generic_tokens": [["Mary", 0.41], [" Hill", 0.2], [" was", None]],
    "mean_confidence": 0.3,
    "min_confidence": 0.2,
    "threshold": 0.5,
    "total_blocks": 1,
}


def _adapter(root: Path) -> Path:
    path = root / "adapter"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    (path / "adapter_model.safetensors").write_bytes(random.Random(0).randbytes(256))
    return path


def scenario(redis_url: str, root: str) -> dict[str, Any]:
    """Everything an API replica does, on this host; returns what the test checks."""
    import httpx

    from service.artifacts.store import INPUT, SPEC_FILE, WORK, store_for
    from service.review import materials
    from service.settings import Settings
    from tests.support.fake_vllm import FakeUpstream
    from tests.support.serving import start_gateway

    out: dict[str, Any] = {}
    upstream = FakeUpstream("gpu1").start()
    settings = Settings(
        data_dir=Path(root) / "data",
        database_url=None,
        redis_url=redis_url,
        workers=0,
        engine="inprocess",
        base_model=Path(root) / "no-model-here",
        serving_backend="openai-upstream",
        upstream_urls=[upstream.url],
        upstream_probe_interval_s=0.2,
        reconcile_interval=0.2,
    )
    gateway = start_gateway(settings)
    try:
        client = httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.key()}"}, timeout=30
        )
        messages = [{"role": "user", "content": PROBE["prompt"]}]
        reply = client.post(
            "/v1/chat/completions", json={"model": "chat", "messages": messages, "max_tokens": 4}
        )
        out["chat"] = reply.status_code
        rid = gateway.ready_request(_adapter(Path(root)), probes=[PROBE])
        out["deploy"] = client.post("/v1/deployments", json={"request_id": rid}).status_code
        out["loaded"] = sorted(upstream.app.loras)
        verified = client.post("/v1/verifications", json={"request_id": rid, "prompts": [PROBE]})
        out["verification"] = verified.status_code
        out["verification_results"] = verified.json().get("results", [])

        store = store_for(settings)
        store.put_json(rid, INPUT, SPEC_FILE, SPEC)
        store.put_json(rid, WORK, materials.ANCHORS_FILE, ANCHORS)
        targets = store.local_dir(rid, WORK) / "targets"
        targets.mkdir(parents=True, exist_ok=True)
        (targets / "blocks.json").write_text(json.dumps({"blocks": [{"index": 0}], "flagged": [0]}))
        (targets / materials.TARGET_REVIEW_ITEMS_FILE).write_text(json.dumps({"items": [TARGET_ITEM]}))
        out["anchor_items"] = materials.build_items("anchor_review", store, rid, {}, [PROBE], settings)
        out["target_items"] = materials.build_items("target_review", store, rid, {}, [PROBE], settings)
        reviewed = {"anchors": [{"term": "Jane Roe", "kind": "person", "translations": ["Ann Bell"]}]}
        materials.write_anchors(store, rid, {**reviewed, "edited": ["Jane Roe"]})
        out["written_anchors"] = store.get_json(rid, WORK, materials.ANCHORS_FILE)
    finally:
        gateway.stop()
        upstream.stop()
    out["heavy"] = [m for m in HEAVY if m in sys.modules]
    return out


def test_an_api_replica_runs_without_torch(clean_redis: str) -> None:
    from tests.unit.test_import_boundaries import BLOCK

    with tempfile.TemporaryDirectory() as root:
        code = (
            BLOCK
            + "import json, sys\nfrom tests.integration.test_torch_free_replica import scenario\n"
            + "print(json.dumps(scenario(sys.argv[1], sys.argv[2])))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, clean_redis, root],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=150,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [], f"imported on an API replica: {out['heavy']}"
    assert out["chat"] == 200 and out["deploy"] == 201 and len(out["loaded"]) == 1
    assert out["verification"] in (200, 201)
    (row,) = [r for r in out["verification_results"] if r["prompt"] == PROBE["prompt"]][:1]
    assert row["after"]["reference_logprob"] is not None
    assert isinstance(row["after"]["leaks"]["reference"], bool)

    (anchor_task,) = out["anchor_items"]
    assert [a["term"] for a in anchor_task["anchors"]] == ["Jane Roe", "Tarnwick"]
    assert anchor_task["passages"][0]["text"] == SPEC["documents"][0]
    assert out["target_items"] == [TARGET_ITEM]

    # What the review wrote is the dictionary the worker loads (validated by the pipeline's type).
    from gpu_runtime.pipeline.types import AnchorDictionary

    written = AnchorDictionary.model_validate(out["written_anchors"])
    assert written.reviewed and written.anchors[0].translations == ["Ann Bell"]
    assert written.anchors[0].occurrences == [(0, 0, 8), (0, 31, 39)]
    assert "reviewer" in written.anchors[0].sources
