"""Write the output to a temporary file beside its destination and rename it into place."""

import collections
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from app.errors import ErrorCode, RepackError
from app.worker import OrderedWorker

log = logging.getLogger(__name__)

OUTPUT_NAME = "model.tar.gz"
# Copies of the running SHA-256 every so many bytes, so that truncating the
# output (when the fast path splices) does not mean hashing it again.
HASH_SNAPSHOT_INTERVAL = 1 << 20
HASH_SNAPSHOTS_KEPT = 16


class OutputFile:
    """The temporary output file; `publish` renames it to model.tar.gz, `discard` removes it.

    Every byte written is hashed on the way, so the output's SHA-256 is ready
    when the file is complete.
    """

    def __init__(self, output_dir: Path, write_behind: bool = True) -> None:
        self.destination = output_dir / OUTPUT_NAME
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=output_dir, prefix=f".{OUTPUT_NAME}.", suffix=".tmp")
        except OSError as exc:
            raise _output_failed(output_dir, exc) from exc
        self.path = Path(name)
        self._file = os.fdopen(fd, "wb")
        self._sha256 = hashlib.sha256()
        self._size = 0
        self._hash_snapshots: collections.deque = collections.deque([(0, self._sha256.copy())],
                                                                    maxlen=HASH_SNAPSHOTS_KEPT)
        self._writer = OrderedWorker(self._write_now, "write-behind", inline=not write_behind)

    @property
    def size(self) -> int:
        self._drain()
        return self._size

    def write_behind(self, data: bytes) -> None:
        """Queue `data` for a background thread to hash and write.

        The fast path copies the input this way, so hashing and writing overlap
        the decompression. Every other method waits for the queue to drain first.
        """
        self._writer.submit(data)

    def _drain(self) -> None:
        self._writer.drain()

    def write(self, data: bytes | memoryview) -> None:
        self._drain()
        self._write_now(data)

    def _write_now(self, data: bytes | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise _output_failed(self.destination, exc) from exc
        self._sha256.update(data)
        self._size += len(data)
        if self._size - self._hash_snapshots[-1][0] >= HASH_SNAPSHOT_INTERVAL:
            self._hash_snapshots.append((self._size, self._sha256.copy()))

    def read_back(self, offset: int, size: int) -> bytes:
        """Return `size` bytes of what was written, from `offset`."""
        self._drain()
        self._flush()
        return os.pread(self._file.fileno(), size, offset)

    def truncate(self, size: int) -> None:
        """Cut the output back to its first `size` bytes, keeping the hash consistent."""
        self._drain()
        while self._hash_snapshots and self._hash_snapshots[-1][0] > size:
            self._hash_snapshots.pop()
        # Only the last few snapshots are kept, so a cut far back may pass them all.
        start, snapshot = self._hash_snapshots[-1] if self._hash_snapshots else \
            (0, hashlib.sha256())
        self._sha256 = snapshot.copy()
        self._sha256.update(self.read_back(start, size - start))
        self._hash_snapshots.append((size, self._sha256.copy()))
        try:
            self._file.truncate(size)
            self._file.seek(size)
        except OSError as exc:
            raise _output_failed(self.destination, exc) from exc
        self._size = size

    def sha256(self) -> str:
        self._drain()
        return self._sha256.hexdigest()

    def publish(self) -> Path:
        """Rename the output to model.tar.gz, replacing an older one in one step.

        The data is not fsynced: SageMaker uploads the output after the container
        exits, and a machine that crashes before then fails the job anyway, so a
        flush to disk would only add seconds per GiB.
        """
        self._drain()
        try:
            self._flush()
            self._file.close()
            os.chmod(self.path, 0o644)
            os.replace(self.path, self.destination)
        except OSError as exc:
            raise _output_failed(self.destination, exc) from exc
        return self.destination

    def discard(self) -> None:
        """Remove the temporary file; safe to call more than once."""
        try:
            self._drain()
        except (OSError, RepackError):
            pass
        self._writer.close()
        try:
            self._file.close()
        except OSError:
            pass
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("Could not remove the temporary output %s: %s", self.path, exc.strerror)

    def _flush(self) -> None:
        try:
            self._file.flush()
        except OSError as exc:
            raise _output_failed(self.destination, exc) from exc


def _output_failed(path: Path, exc: OSError) -> RepackError:
    reason = exc.strerror or str(exc)
    hints = {
        "No space left on device": "give the output volume more space "
                                   "(about the size of the model archive)",
        "Read-only file system": "mount the output folder read-write",
        "Permission denied": "make the output folder writable for the job's user",
        "File exists": "a file or a broken link is where the output folder should be; "
                       "remove it or choose another --output-dir",
        "Not a directory": "a file is where the output folder should be; "
                           "remove it or choose another --output-dir",
    }
    hint = hints.get(reason, "check that the output folder is writable and has space")
    return RepackError(ErrorCode.OUTPUT_FAILED, f"cannot write {path}: {reason}; {hint}")
