"""The pre-processing threads' niceness (``Settings.preprocess_niceness``): per thread, never the caller's."""

from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from app.engine.engine import lower_thread_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


def _own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_pool_threads_are_niced_and_the_caller_is_not() -> None:
    before = _own_niceness()
    if before >= 19:
        pytest.skip("the test process already runs at the lowest priority")
    target = min(19, before + 3)
    with ThreadPoolExecutor(2, initializer=partial(lower_thread_priority, target)) as pool:
        assert set(pool.map(lambda _: _own_niceness(), range(4))) == {target}
    assert _own_niceness() == before


def test_zero_or_lower_than_current_leaves_the_thread_alone() -> None:
    before = _own_niceness()
    with ThreadPoolExecutor(1, initializer=partial(lower_thread_priority, 0)) as pool:
        assert pool.submit(_own_niceness).result() == before
    with ThreadPoolExecutor(1, initializer=partial(lower_thread_priority, max(0, before - 1))) as pool:
        assert pool.submit(_own_niceness).result() == before
