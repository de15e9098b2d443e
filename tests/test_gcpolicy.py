"""The command line's garbage-collection policy (`mtiasim.gcpolicy`)."""

from __future__ import annotations

import gc

import pytest

from mtiasim.gcpolicy import deferred_collections


@pytest.fixture(autouse=True)
def _restore_collector():
    saved, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*saved)
    gc.enable() if enabled else gc.disable()


def test_no_collection_until_settle_which_freezes_what_is_alive_once():
    gc.set_threshold(700, 10, 10)
    gc.enable()
    frozen = gc.get_freeze_count()
    with deferred_collections() as settle:
        assert not gc.isenabled()
        alive = [object()]  # a list: tracked by the collector, so settle must freeze it
        settle()
        assert gc.isenabled() and gc.get_threshold() == (700, 10, 10)
        after = gc.get_freeze_count()
        assert after > frozen
        settle()  # a second step: nothing more is frozen
        assert gc.get_freeze_count() == after
    assert gc.isenabled() and gc.get_threshold() == (700, 10, 10)
    del alive
    gc.unfreeze()


def test_an_unsettled_block_restores_the_collector_even_on_error():
    gc.enable()
    frozen = gc.get_freeze_count()
    with pytest.raises(RuntimeError), deferred_collections():
        raise RuntimeError("a bad argument before the first step")
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    with deferred_collections() as settle:
        settle()
        assert not gc.isenabled()
    assert not gc.isenabled()
    gc.unfreeze()


def test_mtiasim_run_settles_the_collector_and_restores_it():
    from mtiasim.cli import main

    gc.set_threshold(700, 10, 10)
    gc.enable()
    gc.unfreeze()
    assert main(["run", "dlrm-kaggle", "--batch", "8", "--json"]) == 0
    assert gc.isenabled() and gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
