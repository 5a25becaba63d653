"""A SIGTERM whose SystemExit Python drops (raised inside a weakref callback) still stops the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import signal, sys, time, weakref
    from service.cli import _exit_on_sigterm

    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    class Thing:
        pass

    def callback(ref):
        signal.raise_signal(signal.SIGTERM)  # the handler runs in here: its SystemExit is dropped

    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    print("dropped", flush=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(0.05)
    print("still running", flush=True)
    """
)


def test_a_dropped_sigterm_is_raised_again_until_the_process_stops() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in result.stderr  # Python did drop the first SystemExit
    assert "dropped" in result.stdout and "still running" not in result.stdout
    assert result.returncode == 143, result.stderr[-2000:]
