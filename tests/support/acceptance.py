"""Stage-runner test doubles for the acceptance gate: synthetic evaluation summaries (the evaluate
stage's metrics contract), one that fails the default gate and one that passes it."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

from tests.support.forget import PASSING_METRICS, fake_stage_runner

#: Misses the default gate: 3 leaks on the corpus's questions, 5 of 30 held-out, 10% broken answers.
FAILING_METRICS: dict[str, Any] = {
    **PASSING_METRICS,
    "leaks_after_original": 3,
    "leak_rate_after_original": 0.3,
    "leaks_after_paraphrase": 5,
    "leak_rate_after_paraphrase": 0.5,
    "broken_rate_after": 0.1,
}


class LadderRunner:
    """Like ``fake_stage_runner``, but the evaluation passes only from escalation ``passes_at`` on
    (None: never), and every unlearn/evaluate run's escalation level is recorded.

    ``adapter``: a real PEFT adapter directory copied as the unlearn stage's output (for tests that
    deploy it); ``report``: also write a synthetic ``evaluate/report.json`` so the evaluation review
    gate can open its tasks.
    """

    def __init__(self, passes_at: int | None, *, adapter: Path | None = None, report: bool = False) -> None:
        self.passes_at = passes_at
        self.adapter = adapter
        self.report = report
        self.levels: dict[str, list[int]] = {"unlearn": [], "evaluate": []}
        self._lock = threading.Lock()

    def __call__(self, inp: Any) -> Any:
        out = fake_stage_runner(inp)
        level = int(inp.options.get("pipeline", {}).get("escalation", 0))
        if inp.stage in self.levels:
            with self._lock:
                self.levels[inp.stage].append(level)
        if inp.stage == "unlearn" and self.adapter is not None:
            from service.deployments.storage import dir_hash

            shutil.rmtree(inp.adapter_dir, ignore_errors=True)
            shutil.copytree(self.adapter, inp.adapter_dir)
            out.adapter_path, out.adapter_hash = str(inp.adapter_dir), dir_hash(inp.adapter_dir)
        if inp.stage == "evaluate":
            passed = self.passes_at is not None and level >= self.passes_at
            out.metrics = dict(PASSING_METRICS if passed else FAILING_METRICS)
            if self.report:
                folder = inp.work_dir / "evaluate"
                folder.mkdir(parents=True, exist_ok=True)
                rows = [
                    {"prompt": p["prompt"], "completion": "synthetic answer", "leaked_terms": []}
                    for p in inp.spec.get("probes", [])
                ]
                report = {"forget": {"after": {"rows": rows}, "before": {"rows": rows}}}
                (folder / "report.json").write_text(json.dumps(report), encoding="utf-8")
        return out
