"""A worker pool with a bound on queued work, for chunk hashing and writing.

The bound is the back-pressure that keeps memory flat: a caller that reads a
disk faster than chunks can be compressed blocks in submit() instead of
queueing the whole disk. The first failure of any job is kept and raised by
every later submit() and by drain(), so an error on a worker thread always
reaches the caller.
"""

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class JobPipeline:
    def __init__(self, workers: int, queue_per_worker: int = 8) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cairn-chunk")
        self._limit = workers * queue_per_worker
        self._in_flight = 0
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    def submit(self, job: Callable[[], None]) -> None:
        """Run job on a worker, blocking while the queue is full."""
        with self._changed:
            while True:
                self._raise_failure()
                if self._in_flight < self._limit:
                    break
                self._changed.wait()
            self._in_flight += 1
        try:
            self._pool.submit(self._run, job)
        except BaseException:
            self._finished()
            raise

    def drain(self) -> None:
        """Wait until every submitted job has finished; raise the first failure."""
        with self._changed:
            while self._in_flight:
                self._changed.wait()
            self._raise_failure()

    def close(self) -> None:
        """Drop queued jobs, wait for running ones and stop the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:
            with self._changed:
                if self._error is None:
                    self._error = e
        finally:
            self._finished()

    def _finished(self) -> None:
        with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error
