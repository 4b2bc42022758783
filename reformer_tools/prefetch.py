"""Run a generator one step ahead in a background thread.

Conversion is a pipeline: inflate/read the next array, transform it, write
it. zlib/ISA-L, numpy copies and file writes all release the GIL, so reading
and transforming tensor i+1 in a worker while the caller writes tensor i uses
both cores; the queue holds at most ``depth`` items, so memory stays at a few
tensors.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Final, Generic, TypeVar

T = TypeVar("T")
_POLL: Final = 0.1  # seconds between checks that the consumer still wants items


class _Done:
    pass


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Prefetcher(Generic[T]):
    def __init__(self, source: Iterable[T], depth: int) -> None:
        self._queue: queue.Queue[T | _Done | _Failed] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._source = iter(source)
        self._thread = threading.Thread(target=self._produce, name="reformer-tools-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: T | _Done | _Failed) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    break
            else:
                self._put(_Done())
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Failed(error))
        finally:
            close = getattr(self._source, "close", None)
            if close is not None:
                close()  # run the source's cleanup (open files) in the thread that ran it

    def items(self) -> Iterator[T]:
        try:
            while True:
                item = self._queue.get()
                if isinstance(item, _Done):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            self._stop.set()


def prefetch(source: Iterable[T], depth: int = 1) -> Iterator[T]:
    """Iterate ``source`` in a worker thread, at most ``depth`` items ahead."""
    return _Prefetcher(source, depth).items()
