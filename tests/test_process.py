"""The rig's rule for child processes: every child dies with the process that started it (no emulator)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PARENT = """
import sys, time
from broker import process
child = process.start(["sleep", "120"], ".", sys.argv[1])
print(child.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(30)
def test_a_child_dies_when_its_parent_is_sigkilled(tmp_path):
    cmd = [sys.executable, "-c", PARENT, str(tmp_path / "child.log")]
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True) as parent:
        try:
            child = int(parent.stdout.readline())
            # The tie is made by setpriv just before it execs the command: wait for the command itself.
            deadline = time.monotonic() + 10
            while not Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep"):
                assert time.monotonic() < deadline, "the child never started"
                time.sleep(0.01)
            assert _alive(child)
        finally:
            parent.kill()  # SIGKILL: no cleanup code of the parent's runs
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = _alive(child)
    if survived:
        os.kill(child, 9)
    assert not survived, "the child outlived its SIGKILLed parent"
