"""SIGTERM stops the plugin even when it lands while the main thread holds the stop event's lock (inside
Event.wait, where the main thread spends its life): a handler that set the event there would wait for a
lock its own thread holds, for ever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import signal, sys
from plugin.goplugin import Stopper, stop_on_sigterm

stopper = Stopper()
stop_on_sigterm(stopper)
with stopper.event._cond:  # what Event.wait holds between its checks
    signal.raise_signal(signal.SIGTERM)
sys.exit(0 if stopper.event.wait(10) and stopper.reason == "SIGTERM" else 3)
"""


def test_sigterm_while_the_main_thread_holds_the_stop_events_lock() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=20, check=False
    )
    assert result.returncode == 0, result.stderr
