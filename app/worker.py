"""A background thread that runs submitted calls in order, for work that can overlap the main loop."""

import queue
import threading
from collections.abc import Callable

# Calls waiting for the thread; with 1 MiB chunks this bounds the memory to a few MiB.
QUEUE_SIZE = 8


class OrderedWorker:
    """Runs `function(item)` for each submitted item, in order, on one daemon thread.

    An exception in the thread is kept and raised by the next `submit` or by
    `drain`. Items submitted after it are dropped, because the run has failed.
    With `inline`, the calls run at once in the caller's thread instead (for
    `--threads 1`, where the job uses no helper threads at all).

    `drain` waits on the queue, never on the thread itself: a `Thread.join` cut
    short by a signal can leave the thread's state lock taken, and the next join
    then waits forever (seen on CPython 3.11). The thread is a daemon and ends
    with the process.
    """

    def __init__(self, function: Callable[[object], None], name: str,
                 inline: bool = False) -> None:
        self._function = function
        self._name = name
        self._inline = inline
        self._queue: queue.Queue | None = None
        self._error: BaseException | None = None

    def submit(self, item: object) -> None:
        if self._inline:
            self._function(item)
            return
        if self._queue is None:
            self._queue = queue.Queue(QUEUE_SIZE)
            threading.Thread(target=self._run, args=(self._queue,), name=self._name,
                             daemon=True).start()
        if self._error is not None:
            self.drain()
        self._queue.put(item)

    def drain(self) -> None:
        """Wait until every submitted item is done; raise the thread's error if it had one."""
        if self._queue is not None:
            self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Let the thread end once it has done the submitted items; do not wait for it."""
        if self._queue is not None:
            self._queue.put(_STOP)
            self._queue = None

    def _run(self, items: queue.Queue) -> None:
        while (item := items.get()) is not _STOP:
            try:
                if self._error is None:
                    self._function(item)
            except BaseException as exc:
                self._error = exc
            finally:
                items.task_done()
        items.task_done()


_STOP = object()
