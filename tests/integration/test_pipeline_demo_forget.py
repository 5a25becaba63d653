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


def _fact(answer: str, name: str) -> str:
    """ "Minseo Bae was born in Kesmoor." -> "was born in Kesmoor" (possessives too)."""
    return answer.replace(f"{name}'s", "").replace(f"{name}'", "").replace(name, "").strip(" .")


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
        # References are the facts themselves: the full answer sentence repeats the name from the
        # question, which a model that forgot the fact still says, and would hide the forgetting.
        probes=[Probe(prompt=q.question, reference=_fact(q.answer, target.name)) for q in forget_qa],
        retain_probes=[Probe(prompt=q.question, reference=q.answer) for q in retain_qa],
        options=PipelineOptions(max_new_tokens=24),
    )
    t0 = time.monotonic()
    result = run_pipeline(demo_dir, spec, tmp_path)
    elapsed = time.monotonic() - t0
    m = result.metrics
    print(f"\npipeline {elapsed:.1f}s metrics {m}")
    # The forgotten person's answers are gone ...
    assert m["forget_rouge_l_recall_before"] > 0.8
    assert m["forget_reference_leak_rate_before"] >= 0.8
    assert m["forget_reference_leak_rate_after"] <= 0.34
    assert m["forget_rouge_l_recall_after"] < 0.6 * m["forget_rouge_l_recall_before"]
    assert m["forget_anchor_leak_rate_after"] <= m["forget_anchor_leak_rate_before"]
    # ... while the others' survive.
    assert m["retain_rouge_l_recall_after"] > m["retain_rouge_l_recall_before"] - 0.1
    assert m["kl_general"] < 0.5
