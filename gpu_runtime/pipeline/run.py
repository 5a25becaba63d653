"""Run every stage of a forget request in order, in one work directory.

Each stage is idempotent, so ``run_pipeline`` after a crash or cancellation resumes where it
stopped. ``STAGE_FUNCTIONS`` maps the worker's job names to the stage functions; all share the
signature ``(base_model_dir, spec, work_dir, *, deployed_adapter, progress, should_cancel)``.

Defaults (``PipelineOptions``) were tuned on the demo model; see the pipeline's report in docs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .anchors import load_anchors, mine_anchors
from .evaluate import evaluate
from .reinforce import reinforce
from .targets import generate_targets
from .types import CancelFn, ForgetSpec, PipelineResult, ProgressFn, StageResult
from .unlearn import unlearn

log = logging.getLogger(__name__)

StageFn = Callable[..., StageResult]


def unlearn_reviewed(
    base_model_dir: Path | str,
    spec: ForgetSpec,
    work_dir: Path | str,
    *,
    deployed_adapter: Path | str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> StageResult:
    """``unlearn``, after regenerating the blocks a target reviewer fixed (``target_fixes.py``).

    The target review sits between generate_targets and unlearn, so its fixes are applied here:
    ``generate_targets`` recomputes those blocks only (and skips when there are none or they are done).
    """
    from .target_fixes import read_review

    if read_review(work_dir).get("replacements"):

        def regenerating(_stage: str, _fraction: float, message: str) -> None:
            if progress is not None:
                progress("unlearn", 0.0, f"reviewed targets: {message}")

        generate_targets(
            base_model_dir,
            spec,
            work_dir,
            deployed_adapter=deployed_adapter,
            progress=regenerating,
            should_cancel=should_cancel,
        )
    return unlearn(
        base_model_dir,
        spec,
        work_dir,
        deployed_adapter=deployed_adapter,
        progress=progress,
        should_cancel=should_cancel,
    )


STAGE_FUNCTIONS: dict[str, StageFn] = {
    "reinforce": reinforce,
    "mine_anchors": mine_anchors,
    "generate_targets": generate_targets,
    "unlearn": unlearn_reviewed,
    "evaluate": evaluate,
}


def run_stage(
    name: str,
    base_model_dir: Path | str,
    spec: ForgetSpec,
    work_dir: Path | str,
    *,
    deployed_adapter: Path | str | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    **extra: Any,
) -> StageResult:
    """Run one stage by its job name (as the arq worker does)."""
    try:
        fn = STAGE_FUNCTIONS[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; expected one of {sorted(STAGE_FUNCTIONS)}") from None
    return fn(
        base_model_dir,
        spec,
        work_dir,
        deployed_adapter=deployed_adapter,
        progress=progress,
        should_cancel=should_cancel,
        **extra,
    )


def run_pipeline(
    base_model_dir: Path | str,
    spec: ForgetSpec,
    work_dir: Path | str,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    deployed_adapter: Path | str | None = None,
    llm_client: Any = None,
) -> PipelineResult:
    """All stages, without review pauses. Returns where the adapters and the report are."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, StageResult] = {}
    for name in STAGE_FUNCTIONS:
        extra = {"llm_client": llm_client} if name in ("mine_anchors", "evaluate") else {}
        results[name] = run_stage(
            name,
            base_model_dir,
            spec,
            work,
            deployed_adapter=deployed_adapter,
            progress=progress,
            should_cancel=should_cancel,
            **extra,
        )
        log.info("stage %s %s", name, "skipped (done)" if results[name].skipped else "finished")
    anchors = load_anchors(work)
    return PipelineResult(
        stages=results,
        adapter_dir=str(work / "unlearn" / "delta"),
        served_adapter_dir=str(work / "unlearn" / "served"),
        metrics=results["evaluate"].summary,
        review={
            "anchors": len(anchors.anchors),
            "llm_errors": anchors.llm_errors,
            "flagged_blocks": results["generate_targets"].summary.get("flagged_blocks", []),
        },
    )
