"""Many hosts: two API replicas and two workers as separate processes on PostgreSQL, Redis and S3.

The scenario (``tests.support.many_hosts.run_flow``): a forget request filed on replica A is trained by
the workers (the real pipeline on a tiny model), deployed by the auto policy, served identically by
both replicas through the upstream pool, survives upstream restarts (re-warmed; answered by the
deployed version or 503, never another), is followed by a second request composed on the first, and
rolls back. Chat traffic on both replicas runs throughout, and every answer is checked against the
alias's version in the database when the replica admitted it (the client reads the alias's generation
just before sending and just after the answer; the answer must come from a version between the two).
Issue 12's targets are asserted: a deploy is live on every upstream and replica within 2 s of
``ready``, and no request is answered by a version other than the alias's at admission -- not even by
the version the alias has just left, on a replica that has not converged yet.

Two variants share the flow: the fake vLLM of ``tests/support/fake_vllm.py`` (runs everywhere
PostgreSQL does) and a real vLLM (``OBLIVIATE_TEST_VLLM_URL``; skipped without one).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.many_hosts import (
    PROPAGATION_TARGET_S,
    Answer,
    FakePool,
    Report,
    UpstreamPool,
    VLLMPool,
    judge,
    many_hosts,
    postgres_or_skip,
    run_flow,
)

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def tiny_base_model(tmp_path: Path) -> Path:
    """The workers' base model: a tiny Llama and its tokenizer, built in memory (about a second)."""
    from gpu_runtime.pipeline.testing import save_tiny_model_dir

    return save_tiny_model_dir(tmp_path / "tiny-model")


def check(report: Report) -> None:
    print("\n" + "\n".join(report.lines()))
    verdict = report.verdict
    assert verdict is not None
    # Zero, including answers by the version the alias had just left (a replica behind the database
    # catches up at admission, or answers 503).
    assert not verdict.wrong_version, [
        (a.replica, a.text, a.gen_before, a.gen_after, sorted(by), sorted(held))
        for a, by, held in verdict.wrong_version[:5]
    ]
    assert not verdict.fingerprint_mismatch, verdict.fingerprint_mismatch[:5]
    assert not verdict.other_errors, verdict.other_errors[:5]
    assert not report.log_problems, report.log_problems[:10]
    assert not report.replicas_with_torch, f"API replicas with torch loaded: {report.replicas_with_torch}"
    for change, seconds in report.propagation_s.items():
        assert seconds <= PROPAGATION_TARGET_S, f"{change}: live everywhere after {seconds:.3f} s"
    # The deploys were trained by the workers (stage jobs found in their logs).
    for request_id, stages in report.stages_by_worker.items():
        assert {"reinforce", "unlearn", "evaluate"} <= set(stages), (request_id, stages)


def run(server: str, tmp_path: Path, pool: UpstreamPool, base_model: Path, device: str = "cpu") -> Report:
    with many_hosts(tmp_path / "hosts", pool, server) as hosts:
        try:
            return run_flow(hosts, base_model, device=device)
        except BaseException:
            print(hosts.logs())
            raise


@pytest.fixture
def pg_server() -> str:
    """The PostgreSQL server the hosts share (skips without one, before anything is built or started)."""
    return postgres_or_skip()


@pytest.fixture
def fake_pool() -> Iterator[FakePool]:
    pool = FakePool(2)
    try:
        yield pool
    finally:
        pool.close()


@pytest.mark.slow
def test_two_replicas_two_workers_fake_vllm(
    pg_server: str, tmp_path: Path, fake_pool: FakePool, tiny_base_model: Path
) -> None:
    check(run(pg_server, tmp_path, fake_pool, tiny_base_model))
    # Both upstreams took requests: the replicas spread them over the pool.
    assert all(sum(up.app.served.values()) > 0 for up in fake_pool.upstreams)


@pytest.mark.slow
def test_two_replicas_two_workers_real_vllm(tmp_path: Path) -> None:
    """The same flow against a real vLLM (started with runtime LoRA updating, ``--enable-lora``).

    ``OBLIVIATE_TEST_VLLM_URL``: its base URL(s), comma-separated; ``OBLIVIATE_TEST_VLLM_BASE_MODEL``:
    the model directory it serves, which the workers train on (readable here); optional
    ``OBLIVIATE_TEST_VLLM_API_KEY`` and ``OBLIVIATE_TEST_VLLM_DEVICE`` (the workers' torch device, default
    auto). vLLM must read the replicas' adapter folders under the test's
    temporary directory (same host), and its ``--max-lora-rank`` must be at least 8.
    """
    urls = [u.strip() for u in os.environ.get("OBLIVIATE_TEST_VLLM_URL", "").split(",") if u.strip()]
    if not urls:
        pytest.skip("OBLIVIATE_TEST_VLLM_URL is not set: no real vLLM to run the many-hosts flow against")
    model = os.environ.get("OBLIVIATE_TEST_VLLM_BASE_MODEL")
    if not model or not Path(model).is_dir():
        pytest.skip(
            "OBLIVIATE_TEST_VLLM_BASE_MODEL must name the model directory the vLLM serves "
            "(the workers train adapters on the same base)"
        )
    server = postgres_or_skip()
    pool = VLLMPool(urls, os.environ.get("OBLIVIATE_TEST_VLLM_API_KEY") or None)
    device = os.environ.get("OBLIVIATE_TEST_VLLM_DEVICE", "auto")  # where the workers train
    try:
        check(run(server, tmp_path, pool, Path(model), device=device))
    finally:
        pool.close()


def test_the_checker_tells_versions_apart() -> None:
    """The traffic checker is not vacuous: it flags each way a replica can answer wrongly."""
    one, two = "a" * 32, "b" * 32
    versions = {0: None, 1: f"obl-{one}", 2: f"obl-{two}"}
    # deploy v1 (generation 1), deploy v2 (2), roll back to v1 (3)
    generations = {0: 0, 1: 1, 2: 2, 3: 1}
    fp = {0: "fp_base", 1: f"fp_{one[:16]}", 2: f"fp_{two[:16]}"}

    def said(version: int, before: int, after: int | None = None, fingerprint: int | None = None) -> Answer:
        who = "fake-base-model" if version == 0 else f"obl-{(one, two)[version - 1]}"
        stamp = fp[version if fingerprint is None else fingerprint]
        answer = Answer("a", 1.0, 1.1, 200, f"{who} says: hi", stamp)
        answer.gen_before, answer.gen_after = before, before if after is None else after
        return answer

    answers = [
        said(0, 0),  # the base model before any deploy: right
        said(0, 0, 1),  # the flip happened while it was asked: either version is right
        said(1, 0, 1),
        said(1, 1),
        said(0, 1),  # the replica had not caught up with the deploy: stale
        said(2, 1),  # a version the alias was not at yet: wrong
        said(0, 2),  # the base model while v2 is deployed: stale
        said(2, 3),  # v2 after the rollback to v1 was committed: stale
        said(2, 2, 3),  # ... while the rollback was committed: right
        said(1, 3, fingerprint=2),  # v1 answered, the replica claims v2
        Answer("b", 6.0, 6.1, 503, code="alias_unavailable"),
        Answer("b", 7.0, 7.1, 500, code="internal_error"),
    ]
    verdict = judge(answers, generations, versions, FakePool.answered_by)
    assert verdict.answered == 10 and verdict.refused_503 == 1 and len(verdict.other_errors) == 1
    assert [(a.gen_before, sorted(by), sorted(held)) for a, by, held in verdict.wrong_version] == [
        (1, [0], [1]),
        (1, [2], [1]),
        (2, [0], [2]),
        (3, [2], [1]),
    ]
    assert [(a.gen_before, a.text[:5]) for a in verdict.stale] == [(1, "fake-"), (2, "fake-"), (3, "obl-b")]
    assert verdict.across_a_flip == 3
    assert len(verdict.fingerprint_mismatch) == 1 and verdict.fingerprint_mismatch[0].gen_before == 3
