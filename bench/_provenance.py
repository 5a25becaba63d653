"""What a bench's JSON output records about its run: the command, the date, the machine, the settings."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_result(
    path: Path, bench: str, args: argparse.Namespace, argv: Sequence[str] | None, **payload: Any
) -> None:
    """Write ``payload`` to ``path`` as JSON, headed by the run's provenance."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "bench": bench,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **payload,
    }
    path.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"wrote {path}")
