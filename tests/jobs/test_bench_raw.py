"""The bench processes' turns on the GPU (jobs.bench_raw.gpu_turn): one at a time, and a
turn ends with its block, or with its process."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from jobs.bench_raw import gpu_turn

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_turn_waits_for_the_first(tmp_path):
    first_in, log = threading.Event(), []

    def first() -> None:
        with gpu_turn(tmp_path):
            first_in.set()
            time.sleep(0.5)
            log.append(("first out", time.monotonic()))

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with gpu_turn(tmp_path):  # another open file: the lock is exclusive between them
        log.append(("second in", time.monotonic()))
    thread.join(10)
    assert [what for what, _ in log] == ["first out", "second in"], log
    assert log[1][1] >= log[0][1]


def test_a_process_killed_in_its_turn_leaves_none_held(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from jobs.bench_raw import gpu_turn\n"
         "with gpu_turn(Path(sys.argv[1])):\n    print('in', flush=True); time.sleep(600)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "in"
        holder.kill()
        holder.wait(30)
        got = threading.Event()

        def take() -> None:
            with gpu_turn(tmp_path):
                got.set()

        threading.Thread(target=take, daemon=True).start()
        assert got.wait(10), "the killed process's turn was never released"
    finally:
        holder.kill()
