"""Several windows in the model at once (recon/windows.py, WindowsInFlight): the same windows, in the same order, with the
same results as one at a time, also when a window is dropped or carries frames into the next one."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from recon.datasets.synthetic import SyntheticSource
from recon.models.classical import ClassicalModel
from recon.pipeline import Pipeline, PipelineConfig
from recon.windows import ScheduleConfig, WindowScheduler, WindowsInFlight


def settled(depth: int, decide) -> tuple[list[tuple[list[int], list[int]]], int]:  # type: ignore[no-untyped-def]
    """(window, result) pairs in the order they were settled, and the most windows inferred at once."""
    log: list[tuple[list[int], list[int]]] = []
    busy, most, lock = [0], [0], threading.Lock()

    def infer(window: list[int]) -> list[int]:
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.005 * (window[0] % 3))  # uneven: later windows sometimes finish first
        with lock:
            busy[0] -= 1
        return [10 * f for f in window]

    def settle(window: list[int], result: list[int]) -> str | int | None:
        log.append((list(window), result))
        return decide(window)

    windows = WindowsInFlight(WindowScheduler(6, 2), infer, settle, depth, "test-infer")  # type: ignore[arg-type]
    for frame in range(60):
        windows.push(frame)  # type: ignore[arg-type]
    windows.finish()
    windows.close()
    return log, most[0]


def test_windows_in_flight_settle_as_one_at_a_time_would() -> None:
    def decide(window: list[int]) -> str | int | None:
        if window[-1] == 13:
            return "reject"  # dropped: the next window overlaps the one before it
        if window[-1] == 29:
            return 4  # the model could not place its last frames: the next window starts with four
        return None

    one, _ = settled(1, decide)
    two, most = settled(2, decide)
    assert most == 2  # two windows were really in the model together
    assert two == one
    assert all(result == [10 * f for f in window] for window, result in two)
    starts = [window[0] for window, _ in one]
    assert starts[:6] == [0, 4, 8, 8, 16, 20]
    assert one[3][0] == [8, 9, 14, 15, 16, 17]  # 8..13 dropped: the next window overlaps the one ending at 9
    assert [window for window, _ in one if window[0] == 26] == [[26, 27, 28, 29, 30, 31]]  # carried 26..29


def test_the_pipeline_writes_the_same_run_with_two_windows_in_flight(tmp_path: Path) -> None:
    outputs = {}
    for depth in (1, 2):
        model = ClassicalModel()
        model.windows_in_flight = depth
        source = SyntheticSource("street", num_frames=40, width=320, height=96, seed=4)
        state = Pipeline(
            source, model, tmp_path / str(depth), PipelineConfig(ScheduleConfig(window=12, overlap=3))
        ).run()
        assert state.status == "finished" and state.windows == 5
        outputs[depth] = [
            (tmp_path / str(depth) / name).read_bytes() for name in ("trajectory.tum", "frames.txt", "map.ply")
        ]
    assert outputs[2] == outputs[1]


def test_one_window_at_a_time_never_starts_before_the_one_before_is_settled() -> None:
    # A stateful model (a KV cache) must not see a window that is then cut again.
    events: list[tuple[str, int]] = []

    def infer(window: list[int]) -> list[int]:
        events.append(("infer", window[0]))
        return window

    def settle(window: list[int], result: list[int]) -> str | int | None:
        events.append(("settle", window[0]))
        return "reject" if window[-1] == 13 else None

    windows = WindowsInFlight(WindowScheduler(6, 2), infer, settle, 1, "test-infer")  # type: ignore[arg-type]
    for frame in range(40):
        windows.push(frame)  # type: ignore[arg-type]
    windows.finish()
    windows.close()
    assert [kind for kind, _ in events] == ["infer", "settle"] * (len(events) // 2)


def test_the_last_window_starts_beside_the_windows_still_in_flight() -> None:
    """On two cores the short last window runs beside the windows before it, not alone after them; a window
    settled with a new cut still has the last window cut again."""
    events: list[str] = []
    lock = threading.Lock()

    def infer(window: list[int]) -> list[int]:
        with lock:
            events.append(f"start {window[0]}..{window[-1]}")
        time.sleep(0.3 if window[0] == 52 else 0.01)  # the last full window (52..57) is slow
        return window

    def settle(window: list[int], result: list[int]) -> str | int | None:
        with lock:
            events.append(f"settle {window[0]}..{window[-1]}")
        return None

    windows = WindowsInFlight(WindowScheduler(6, 2), infer, settle, 2, "test-infer")  # type: ignore[arg-type]
    for frame in range(60):
        windows.push(frame)  # type: ignore[arg-type]
    windows.finish()
    windows.close()
    assert events.index("start 56..59") < events.index("settle 52..57") < events.index("settle 56..59")

    def decide(window: list[int]) -> str | int | None:
        return "reject" if window[-1] == 57 else None  # the last full window is dropped: the last one is cut again

    one, _ = settled(1, decide)
    two, _ = settled(2, decide)
    assert two == one and one[-1][0] == [52, 53, 58, 59]
