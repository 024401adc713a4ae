"""The worker's garbage-collector settings (nexo/platform/gcpolicy.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from nexo.platform import gcpolicy


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_tune_freezes_what_exists_and_raises_the_young_threshold() -> None:
    survivor = [object() for _ in range(10)]  # alive at start-up: frozen with the rest
    gc.unfreeze()
    gcpolicy.tune()
    assert gc.get_threshold() == gcpolicy.THRESHOLDS
    assert gc.get_freeze_count() >= len(survivor)
    assert not any(obj is survivor for obj in gc.get_objects())  # out of the collector's sight


@pytest.mark.usefixtures("restore_gc")
def test_cyclic_garbage_is_still_collected_after_tuning() -> None:
    gcpolicy.tune()

    class Node:
        partner: Node

    a, b = Node(), Node()
    a.partner, b.partner = b, a
    del a, b
    assert gc.collect(0) >= 2  # the threshold delays collections; it does not stop them
