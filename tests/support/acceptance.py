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
    deploy it); ``report``: also write a synthetic per-kind ``evaluate/report.json`` (as the evaluate
    stage does) so the evaluation review gate can open its tasks; ``"empty"``: one with no answers.
    """

    def __init__(
        self, passes_at: int | None, *, adapter: Path | None = None, report: bool | str = False
    ) -> None:
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
                (folder / "report.json").write_text(json.dumps(self._report(inp)), encoding="utf-8")
        return out

    def _report(self, inp: Any) -> dict[str, Any]:
        if self.report == "empty":
            return {"kinds": {}}

        def rows(kind: str, n: int, leaked: int = -1, broken: int = -1) -> dict[str, Any]:
            after = [
                {"prompt": f"{kind} question {i}", "completion": f"after {i}", "leaked": i == leaked}
                | {"broken": i == broken}
                for i in range(n)
            ]
            before = [{"prompt": f"{kind} question {i}", "completion": f"before {i}"} for i in range(n)]
            return {"after": {"rows": after}, "before": {"rows": before}}

        probes = len(inp.spec.get("probes", []))
        return {
            "kinds": {
                "probe": rows("probe", probes),
                "original": rows("original", 3, leaked=2),
                "paraphrase": rows("paraphrase", 2, broken=1),
            }
        }
