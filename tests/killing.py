"""Run a training command until its first checkpoint, SIGKILL it, then rerun it (for the resume tests)."""

import os
import signal
import subprocess
import time
from pathlib import Path

CHECKPOINT_TIMEOUT_S = 120
RERUN_TIMEOUT_S = 300
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def kill_after_checkpoint(cmd: list[str], state_file: Path, linger_s: float) -> None:
    """Start ``cmd``, wait for ``state_file`` to appear, let it run ``linger_s`` more (so there are logged steps
    past the checkpoint to redo), then SIGKILL it."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.time() + CHECKPOINT_TIMEOUT_S
        while not state_file.is_file():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, f"no checkpoint within {CHECKPOINT_TIMEOUT_S} s"
            time.sleep(0.05)
        time.sleep(linger_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def rerun_until(cmd: list[str], placeholder_steps: str, end: int, resumed_from: int) -> str:
    """Rerun ``cmd`` with its step count ``placeholder_steps`` replaced by ``end``; it must succeed and say it
    resumed from ``resumed_from``. Returns its stdout."""
    cmd = list(cmd)
    cmd[cmd.index(placeholder_steps)] = str(end)
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=RERUN_TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert f"resuming from step {resumed_from}" in out.stdout
    return out.stdout
