"""Write the output to a temporary file beside its destination and rename it into place."""

import collections
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from app.errors import ErrorCode, RepackError

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

    def __init__(self, output_dir: Path) -> None:
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

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes | memoryview) -> None:
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
        self._flush()
        return os.pread(self._file.fileno(), size, offset)

    def truncate(self, size: int) -> None:
        """Cut the output back to its first `size` bytes, keeping the hash consistent."""
        while self._hash_snapshots[-1][0] > size:
            self._hash_snapshots.pop()
        start, snapshot = self._hash_snapshots[-1]
        self._sha256 = snapshot.copy()
        self._sha256.update(self.read_back(start, size - start))
        try:
            self._file.truncate(size)
            self._file.seek(size)
        except OSError as exc:
            raise _output_failed(self.destination, exc) from exc
        self._size = size

    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def publish(self) -> Path:
        """Make the output durable and rename it to model.tar.gz, replacing an older one."""
        try:
            self._flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.chmod(self.path, 0o644)
            os.replace(self.path, self.destination)
            _fsync_folder(self.destination.parent)
        except OSError as exc:
            raise _output_failed(self.destination, exc) from exc
        return self.destination

    def discard(self) -> None:
        """Remove the temporary file; safe to call more than once."""
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


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _output_failed(path: Path, exc: OSError) -> RepackError:
    reason = exc.strerror or str(exc)
    hints = {
        "No space left on device": "give the output volume more space "
                                   "(about the size of the model archive)",
        "Read-only file system": "mount the output folder read-write",
        "Permission denied": "make the output folder writable for the job's user",
    }
    hint = hints.get(reason, "check that the output folder is writable and has space")
    return RepackError(ErrorCode.OUTPUT_FAILED, f"cannot write {path}: {reason}; {hint}")
