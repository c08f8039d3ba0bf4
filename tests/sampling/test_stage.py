"""The sampling stage: one thread per device runs every sampler loop, and remembers when
each ran (the bench's gaps between loops)."""
from __future__ import annotations

import threading
import time

import torch

from farm.sampling.stage import run_sampling, sampling_windows


def test_loops_run_on_one_thread_in_inference_mode_and_their_windows_are_kept():
    device = torch.device("cpu")
    seen = []

    def loop():
        seen.append((threading.current_thread().name, torch.is_inference_mode_enabled()))
        time.sleep(0.02)
        return 7

    t0 = time.time()
    assert run_sampling(device, loop) == 7 and run_sampling(device, loop) == 7
    assert seen[0] == seen[1] and seen[0][0].startswith("sampling-cpu") and seen[0][1]
    windows = [w for w in sampling_windows(device) if w[0] >= t0]  # other tests' loops came before
    assert len(windows) == 2
    (a0, a1), (b0, b1) = windows
    assert t0 <= a0 and a1 - a0 >= 0.02 and a1 <= b0 and b1 - b0 >= 0.02


def test_a_loop_that_raises_still_records_its_window_and_the_error_reaches_the_caller():
    device = torch.device("cpu")
    t0 = time.time()

    def fails():
        raise ValueError("interrupted")

    try:
        run_sampling(device, fails)
    except ValueError as exc:
        assert str(exc) == "interrupted"
    else:
        raise AssertionError("the loop's error was lost")
    assert len([w for w in sampling_windows(device) if w[0] >= t0]) == 1
