"""Run a training command until its first checkpoint, then SIGKILL it (for the resume tests)."""

import os
import signal
import subprocess
import time
from pathlib import Path

CHECKPOINT_TIMEOUT_S = 120


def kill_after_checkpoint(cmd: list[str], state_file: Path, linger_s: float) -> None:
    """Start ``cmd``, wait for ``state_file`` to appear, let it run ``linger_s`` more (so there are logged steps
    past the checkpoint to redo), then SIGKILL it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
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
