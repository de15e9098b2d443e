"""The command line's garbage-collection policy (`mtiasim.gcpolicy`)."""

from __future__ import annotations

import gc

import pytest

from mtiasim.gcpolicy import DEFERRED_FULL_THRESHOLD, deferred_full_collections


@pytest.fixture(autouse=True)
def _restore_thresholds():
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


def test_full_collections_wait_for_settle_which_freezes_what_is_alive_once():
    gc.set_threshold(700, 10, 10)
    frozen = gc.get_freeze_count()
    with deferred_full_collections() as settle:
        assert gc.get_threshold() == (700, 10, DEFERRED_FULL_THRESHOLD)
        alive = [object()]  # a list: tracked by the collector, so settle must freeze it
        settle()
        assert gc.get_threshold() == (700, 10, 10)
        after = gc.get_freeze_count()
        assert after > frozen
        settle()  # a second step: nothing more is frozen
        assert gc.get_freeze_count() == after
    assert gc.get_threshold() == (700, 10, 10)
    del alive
    gc.unfreeze()


def test_an_unsettled_block_restores_the_thresholds_even_on_error():
    gc.set_threshold(500, 7, 9)
    frozen = gc.get_freeze_count()
    with pytest.raises(RuntimeError), deferred_full_collections():
        raise RuntimeError("a bad argument before the first step")
    assert gc.get_threshold() == (500, 7, 9)
    assert gc.get_freeze_count() == frozen


def test_mtiasim_run_settles_the_collector_and_restores_its_thresholds():
    from mtiasim.cli import main

    gc.set_threshold(700, 10, 10)
    gc.unfreeze()
    assert main(["run", "dlrm-kaggle", "--batch", "8", "--json"]) == 0
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
