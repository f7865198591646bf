import time

from recon.stage_clock import StageClock


def test_cpu_seconds_leave_out_the_time_the_thread_waits() -> None:
    """The back end's cost is read from CPU seconds: a stage that waits (as the core does for a core the
    model threads hold) counts its wait in wall time only."""
    clock = StageClock("join", "places")
    with clock("join"):
        time.sleep(0.2)
    with clock("places"):
        t = time.thread_time()  # 0.1 s of this thread's CPU, however busy the machine's cores are
        while time.thread_time() - t < 0.1:
            pass
    assert clock.wall_s["join"] >= 0.2 and clock.cpu_s["join"] < 0.05
    assert clock.cpu_s["places"] > 0.05
    assert clock.wall_s["places"] >= clock.cpu_s["places"] * 0.9
