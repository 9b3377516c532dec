"""Progress lines for long work: durations as people read them, and a heartbeat thread.

Training, evaluation and separation each print what they count; what they share is how a
duration reads and the promise of a line at least every interval, even while nothing finishes
(a driver's loop over Ray results blocks until one comes back).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


def clock(seconds: float) -> str:
    """``3725`` -> ``1h02m05s``; ``62`` -> ``1m02s``; ``42.4`` -> ``42s``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def eta(done: float, total: float, elapsed: float) -> str:
    """The time left at the pace so far, or "unknown" before anything is done."""
    if done <= 0:
        return "unknown"
    return clock(elapsed * max(total - done, 0) / done)


class Ticker:
    """Prints ``line()`` when asked, and, while `running`, from a thread whenever ``interval``
    seconds pass without a line: the promise is a line at least every ``interval`` seconds."""

    def __init__(self, line: Callable[[], str], echo: Callable[[str], None]) -> None:
        self.line, self.echo = line, echo
        self.lock = threading.Lock()
        self.last = time.monotonic()

    def tick(self, after: float = 0.0) -> None:
        """Print the line unless one was printed less than ``after`` seconds ago."""
        with self.lock:
            now = time.monotonic()
            if now - self.last >= after:
                self.last = now
                self.echo(self.line())

    @contextlib.contextmanager
    def running(self, interval: float, also: Callable[[], None] = lambda: None) -> Iterator[None]:
        """The heartbeat thread while inside; it calls ``also`` at each beat too."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(max(0.0, self.last + interval - time.monotonic())):
                self.tick(interval)
                also()

        thread = threading.Thread(target=beat, name="progress-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
