"""The memo a classical model's windows share (pair flows, ORB features and matches)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from recon.models.classical.memo import SharedMemo


def test_a_key_asked_by_two_threads_at_once_is_computed_once() -> None:
    """A window asking for what another window is computing waits for that result instead of computing it."""
    memo: SharedMemo[list[int]] = SharedMemo(max_items=4)
    started, release, calls = threading.Event(), threading.Event(), []

    def slow() -> list[int]:
        calls.append(1)
        started.set()
        assert release.wait(5)
        return [7]

    results: dict[str, list[int]] = {}
    first = threading.Thread(target=lambda: results.update(first=memo.get("k", slow)))
    first.start()
    assert started.wait(5)
    second = threading.Thread(target=lambda: results.update(second=memo.get("k", lambda: [8])))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # waiting on the first thread's computation
    release.set()
    first.join(5)
    second.join(5)
    assert calls == [1] and results["first"] is results["second"] == [7]
    assert (memo.hits, memo.misses) == (1, 1)


def test_the_least_recently_used_go_first_within_items_and_bytes() -> None:
    memo: SharedMemo[np.ndarray] = SharedMemo(max_items=3, max_bytes=300, size=lambda a: a.nbytes)
    for key in "abc":
        memo.get(key, lambda: np.zeros(10))  # 80 bytes each
    memo.get("a", lambda: pytest.fail("a is held"))  # used again: now the most recent
    memo.get("d", lambda: np.zeros(10))  # a fourth item: the least recent (b) goes
    assert memo.get("b", lambda: np.ones(1))[0] == 1  # computed again (c goes to make room)
    memo.get("a", lambda: pytest.fail("a is held"))
    big = memo.get("e", lambda: np.zeros(50))  # 400 bytes: returned, not kept
    assert len(big) == 50
    assert len(memo.get("e", lambda: np.ones(1))) == 1
    memo.get("a", lambda: pytest.fail("a is held"))


def test_an_error_reaches_the_waiters_and_the_next_one_to_ask_computes_again() -> None:
    memo: SharedMemo[int] = SharedMemo(max_items=4)

    def fails() -> int:
        raise ValueError("bad frame")

    with pytest.raises(ValueError, match="bad frame"):
        memo.get("k", fails)
    assert memo.get("k", lambda: 3) == 3
