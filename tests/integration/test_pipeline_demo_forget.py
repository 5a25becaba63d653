"""End to end on the demo chat model: forget one person of the demo world, keep the others."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(request: pytest.FixtureRequest) -> Path:
    try:
        return Path(request.getfixturevalue("demo_model_dir"))
    except pytest.FixtureLookupError:
        build = pytest.importorskip("gpu_runtime.demo.build")
        return Path(build.build_demo_model())


# The default objective on the demo model: 5-10 minutes on 2 shared CPU cores (the selectivity term
# added two forward passes per step; measured 568 s at load average 7), over the suite's 600 s default.
@pytest.mark.timeout(1200)
def test_forget_one_person_keep_the_others(demo_dir: Path, tmp_path: Path) -> None:
    from gpu_runtime.demo.world import build_world
    from gpu_runtime.pipeline.run import run_pipeline
    from gpu_runtime.pipeline.types import EntityHint, ForgetSpec, PipelineOptions, Probe, QAPair

    world = build_world()
    target = world.people[0]
    others = world.people[1:4]
    forget_qa = world.qa_for(target.name)
    retain_qa = [qa for p in others for qa in world.qa_for(p.name)[:3]] + world.qa_for("")[:4]
    spec = ForgetSpec(
        documents=[d["text"] for d in world.documents() if d["subject"] == target.name],
        qa_pairs=[QAPair(question=q.question, answer=q.answer) for q in forget_qa],
        hints=[
            EntityHint(term=target.name, kind="person"),
            EntityHint(term=target.first_name, kind="first_name"),
            EntityHint(term=target.last_name, kind="last_name"),
            EntityHint(term=target.birthplace, kind="place"),
            EntityHint(term=target.pet_name),
            EntityHint(term=target.work_title),
        ],
        probes=[Probe(prompt=q.question, reference=q.answer) for q in forget_qa],
        retain_probes=[Probe(prompt=q.question, reference=q.answer) for q in retain_qa],
        options=PipelineOptions(max_new_tokens=24),
    )
    t0 = time.monotonic()
    result = run_pipeline(demo_dir, spec, tmp_path)
    elapsed = time.monotonic() - t0
    m = result.metrics
    print(f"\npipeline {elapsed:.1f}s metrics {m}")
    # The base model knows the person: every question of the corpus is answered.
    assert m["leak_rate_before_original"] == 1.0 and m["leak_rate_before_probe"] == 1.0
    # After: no question of the corpus, none of the request's probes, and no held-out question leaks.
    assert m["leaks_after_original"] == 0 and m["leaks_after_probe"] == 0
    held_out = ("paraphrase", "inverted", "completion")
    for kind in held_out:
        assert m[f"n_{kind}"] > 0, kind
    # Held-out questions, pooled (measured at 0-1 leak in 47 here; the gate's default bound is 2%).
    pooled = sum(m[f"leaks_after_{k}"] for k in held_out) / sum(m[f"n_{k}"] for k in held_out)
    assert pooled <= 0.05, pooled
    # The answers stay language (measured, bounded loosely here: the gate bounds it per request) ...
    assert m["broken_rate_after"] <= 0.3
    # ... while the others' facts survive.
    assert m["retain_rouge_after"] >= 0.95 * m["retain_rouge_before"]
    assert m["kl_general"] < 1.0
