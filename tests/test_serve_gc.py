"""The serving process's garbage collector settings (proxy.serve.tune_gc)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from proxy.serve import GC_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_serve__gc_collects_less_often_and_skips_what_start_up_made() -> None:
    made_at_start_up = {"app": [1, 2, 3]}
    assert gc.is_tracked(made_at_start_up)
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLD
    assert GC_THRESHOLD[0] > 700  # Python's default
    # What was alive before is frozen: no generation a collection walks holds it any more.
    assert gc.get_freeze_count() > 0
    walked = (o for generation in range(3) for o in gc.get_objects(generation))
    assert not any(o is made_at_start_up for o in walked)
