"""Run an iterator a few steps ahead in a background thread."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Final, Generic, TypeVar

T = TypeVar("T")
_POLL: Final = 0.1  # seconds between checks that the consumer still wants items


class _Done:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Prefetch(Generic[T], Iterator[T]):
    """Iterate ``source`` in a worker thread, at most ``depth`` items ahead.

    Conversion is a pipeline: inflate/read the next array, transform it, write it.
    zlib/ISA-L, numpy copies and file writes all release the GIL, so producing item
    i+1 in a worker while the caller consumes item i uses both cores; the queue
    holds at most ``depth`` items, so memory stays at a few tensors.

    Errors raised by the source are raised by ``next`` in the consumer's thread.
    ``close`` stops the worker and waits for it, so whatever the source reads
    (a file) is free again when it returns.
    """

    def __init__(self, source: Iterable[T], depth: int = 1) -> None:
        self._queue: queue.Queue[T | _Done] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done: _Done | None = None
        self._thread = threading.Thread(target=self._produce, args=(iter(source),), name="prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: T | _Done) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    break
            else:
                self._put(_Done())
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Done(error))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # the source's own cleanup, in the thread that ran it

    def __next__(self) -> T:
        if self._done is None:
            item = self._queue.get()
            if not isinstance(item, _Done):
                return item
            self._done = item
            self.close()
        if self._done.error is not None:
            raise self._done.error
        raise StopIteration

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
