"""The service must not import torch (or the GPU runtime) at import time."""

import subprocess
import sys


def test_importing_the_app_does_not_import_torch() -> None:
    code = (
        "import sys, service.app, service.cli;"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'gpu_runtime.pipeline') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"imported at module level: {result.stdout.strip()}"
