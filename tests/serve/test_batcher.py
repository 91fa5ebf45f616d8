"""DynamicBatcher: merging, back-pressure at once, close with drain or cancel, error propagation, item checks."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, wait

import numpy as np
import pytest

from edgeft.core.errors import EdgeftError
from edgeft.serve.batcher import DynamicBatcher, QueueFull


def row_sums(batch: np.ndarray) -> np.ndarray:
    return batch.reshape(batch.shape[0], -1).sum(1, keepdims=True).repeat(2, 1)


class Blocking:
    """An infer function that holds its first call until released, recording every batch size."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(batch.shape[0])
        self.entered.set()
        assert self.release.wait(30)
        return row_sums(batch)


def test_concurrent_submits_are_merged_into_one_batch():
    sizes = []

    def infer(batch):
        sizes.append(batch.shape[0])
        return row_sums(batch)

    xs = [np.full((3, 4, 4), i, np.float32) for i in range(4)]
    futures = [None] * 4
    barrier = threading.Barrier(4)

    def client(i):
        barrier.wait()
        futures[i] = batcher.submit(xs[i])

    with DynamicBatcher(infer, max_batch=4, max_wait_ms=60_000, max_queue=8) as batcher:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = [f.result(timeout=30) for f in futures]
    assert sizes == [4], "four waiting items, max_batch 4: one engine call even with a long max_wait"
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, [48.0 * i, 48.0 * i])  # each caller gets its own row back


def test_queue_full_raises_at_once_and_the_queued_work_still_runs():
    infer = Blocking()
    batcher = DynamicBatcher(infer, max_batch=2, max_wait_ms=0, max_queue=2)
    x = np.zeros((3, 2, 2), np.float32)
    first = batcher.submit(x)
    assert infer.entered.wait(30)  # the worker holds item 1 inside infer; the queue is empty again
    queued = [batcher.submit(x), batcher.submit(x)]
    assert batcher.queue_depth == 2
    with pytest.raises(QueueFull, match="queue is full") as err:
        batcher.submit(x)  # never blocks: the worker is still held
    assert isinstance(err.value, EdgeftError) and err.value.fix
    infer.release.set()
    for f in [first, *queued]:
        assert f.result(timeout=30).shape == (2,)
    batcher.close()
    assert infer.sizes == [1, 2], "the two queued items ran as one batch"


def test_close_without_drain_cancels_queued_work():
    infer = Blocking()
    batcher = DynamicBatcher(infer, max_batch=1, max_wait_ms=0, max_queue=4)
    x = np.zeros((3, 2, 2), np.float32)
    running = batcher.submit(x)
    assert infer.entered.wait(30)
    pending = [batcher.submit(x), batcher.submit(x)]
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    done, _ = wait(pending, timeout=30)
    assert len(done) == 2 and all(f.cancelled() for f in pending)
    infer.release.set()
    closer.join(30)
    assert running.result(timeout=30).shape == (2,), "the running batch still finishes"
    with pytest.raises(CancelledError):
        pending[0].result()
    with pytest.raises(EdgeftError, match="closed"):
        batcher.submit(x)


def test_close_drains_queued_work_by_default():
    batcher = DynamicBatcher(row_sums, max_batch=2, max_wait_ms=1, max_queue=16)
    futures = [batcher.submit(np.ones((3, 2, 2), np.float32)) for _ in range(5)]
    batcher.close()
    assert batcher.closed
    assert [f.result(timeout=0).tolist() for f in futures] == [[12.0, 12.0]] * 5


def test_errors_reach_every_waiter_and_the_batcher_keeps_serving():
    def infer(batch):
        if (batch < 0).any():
            raise RuntimeError("engine failed")
        return row_sums(batch)

    with DynamicBatcher(infer, max_batch=1, max_wait_ms=0) as batcher:
        with pytest.raises(RuntimeError, match="engine failed"):
            batcher.submit(-np.ones((3, 2, 2), np.float32)).result(timeout=30)
        assert batcher.submit(np.ones((3, 2, 2), np.float32)).result(timeout=30).tolist() == [12.0, 12.0]


def test_a_wrong_number_of_output_rows_is_an_error_for_the_waiters():
    batcher = DynamicBatcher(lambda b: np.zeros((b.shape[0] + 1, 2)), max_batch=1, max_wait_ms=0)
    with batcher, pytest.raises(EdgeftError, match="one row per input"):
        batcher.submit(np.ones((3, 2, 2), np.float32)).result(timeout=30)


def test_items_and_settings_are_validated():
    with DynamicBatcher(row_sums, item_shape=(3, 2, 2)) as batcher:
        with pytest.raises(EdgeftError, match="float32"):
            batcher.submit(np.ones((3, 2, 2), np.float64))
        with pytest.raises(EdgeftError, match="differs"):
            batcher.submit(np.ones((3, 4, 4), np.float32))
    with pytest.raises(EdgeftError, match="invalid batcher settings"):
        DynamicBatcher(row_sums, max_batch=0)
