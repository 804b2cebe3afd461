"""Progress lines for long reads, and human-readable sizes."""

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Inputs smaller than this finish in a few seconds and get no progress lines.
REPORT_ABOVE = 100 << 20
REPORT_EVERY = 5.0


class Progress:
    """Logs bytes read, percent, rate and time left every few seconds."""

    def __init__(self, path: Path, total: int) -> None:
        self.path = path
        self.total = total
        self.done_bytes = 0
        self.started = time.monotonic()
        self._next_report = self.started + REPORT_EVERY

    def update(self, size: int) -> None:
        self.done_bytes += size
        if self.total < REPORT_ABOVE:
            return
        now = time.monotonic()
        if now < self._next_report:
            return
        self._next_report = now + REPORT_EVERY
        elapsed = now - self.started
        rate = self.done_bytes / elapsed
        left = (self.total - self.done_bytes) / rate if rate else 0.0
        log.info("Read %s of %s (%.0f%%) at %s/s, about %.0f s left",
                 format_size(self.done_bytes), format_size(self.total),
                 100 * self.done_bytes / self.total, format_size(rate), left)

    def done(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        log.info("Read %s in %.1f s (%s/s)", format_size(self.done_bytes), elapsed,
                 format_size(self.done_bytes / elapsed))


def format_size(size: float) -> str:
    """Format a byte count with binary units: 512 B, 1.5 KiB, 1.2 GiB."""
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")
