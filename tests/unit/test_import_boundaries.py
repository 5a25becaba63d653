"""What the service may import from the GPU runtime, and that an API replica needs no torch.

The rule (README, "Production topology"):

- ``service/serving/embedded.py`` is the only module of ``service/`` that imports ``gpu_runtime`` code
  that needs torch (the engine, the demo model builder): it is imported only when the embedded
  backend is configured.
- Shared definitions both sides must agree on live once, in torch-free modules of the pipeline that the
  service may import (lazily, so importing the app imports none of them): :data:`TORCH_FREE`.
- The CLI entry points (``service/cli.py``, ``service/demo.py``) may import the worker, the pipeline's
  CLI or the demo builder inside the commands that run them, never at module level: the app never
  reaches those commands.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICE = ROOT / "service"
#: Torch-free pipeline modules the service may import: the leak definition (verification) and the
#: acceptance thresholds (intake validates the ``acceptance`` option with them).
TORCH_FREE = ("gpu_runtime.pipeline.leaks", "gpu_runtime.pipeline.gate")
EMBEDDED = "service/serving/embedded.py"
ENTRY_POINTS = ("service/cli.py", "service/demo.py")
#: Makes these modules unimportable, as on an API host without them installed.
BLOCK = """
import importlib.abc, sys
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "transformers", "peft", "accelerate", "tokenizers"}:
            raise ImportError(f"{name} is not installed on this host")
        return None
sys.meta_path.insert(0, _Absent())
"""


def _gpu_imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every import of ``gpu_runtime`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    # Imports under a module-level `if TYPE_CHECKING:` are for annotations only.
    typing_only = {
        id(inner)
        for node in tree.body
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from gpu_runtime.pipeline import leaks` names the module leaks.
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in TORCH_FREE else node.module
                for alias in node.names
            ]
        found += [(name, id(node) in top_level) for name in names if name.split(".")[0] == "gpu_runtime"]
    return found


def test_the_service_imports_gpu_runtime_only_through_the_embedded_backend() -> None:
    offending = []
    for path in sorted(SERVICE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == EMBEDDED:
            continue
        for module, top_level in _gpu_imports(path):
            if module in TORCH_FREE and not top_level:
                continue
            if rel in ENTRY_POINTS and not top_level:
                continue
            where = "at module level" if top_level else "in a function"
            offending.append(f"{rel}: {module} ({where})")
    assert not offending, "service/ imports gpu_runtime outside the embedded backend:\n" + "\n".join(
        offending
    )


def test_the_shared_definitions_import_without_torch() -> None:
    code = BLOCK + "\n".join(f"import {m}" for m in TORCH_FREE) + "\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_importing_the_app_does_not_import_torch() -> None:
    code = (
        "import sys, service.app, service.cli;"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'gpu_runtime.pipeline') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"imported at module level: {result.stdout.strip()}"


def test_the_app_and_the_cli_import_with_torch_absent() -> None:
    code = BLOCK + "import service.app, service.cli, service.demo\nprint('ok')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
