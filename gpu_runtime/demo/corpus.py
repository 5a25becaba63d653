"""Reads a user corpus (JSONL) for the demo model builder; pure Python, no torch."""

from __future__ import annotations

import json
from pathlib import Path

from gpu_runtime.demo.world import QA

__all__ = ["load_corpus_jsonl"]


def load_corpus_jsonl(path: str | Path) -> tuple[list[QA], list[str]]:
    """Read a user corpus: lines of {"question", "answer"} and/or {"text"}; blank lines skipped.

    Returns (qa_pairs, texts). A malformed line raises ValueError naming its line number.
    """
    qa: list[QA] = []
    texts: list[str] = []
    with Path(path).open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            if "question" in obj or "answer" in obj:
                q, a = obj.get("question"), obj.get("answer")
                if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
                    raise ValueError(
                        f"{path}: line {lineno}: 'question' and 'answer' must both be non-empty strings"
                    )
                qa.append(QA(q.strip(), a.strip(), str(obj.get("subject", ""))))
            elif "text" in obj:
                t = obj["text"]
                if not isinstance(t, str) or not t.strip():
                    raise ValueError(f"{path}: line {lineno}: 'text' must be a non-empty string")
                texts.append(t.strip())
            else:
                raise ValueError(f"{path}: line {lineno}: expected keys 'question'+'answer' or 'text'")
    if not qa and not texts:
        raise ValueError(f"{path}: the corpus has no entries")
    return qa, texts
