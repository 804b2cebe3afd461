"""Compress one raw deflate stream chunk by chunk in a thread pool.

Each chunk is deflated on its own, primed with the 32 KiB of uncompressed data before it as a
preset dictionary, so matches still reach across chunk boundaries. Every chunk but the last
ends with a sync flush, which closes the open deflate block and appends an empty stored block.
The chunk's output thus ends on a byte boundary with no final block, and the next chunk's
output can follow it directly. The last chunk ends with a final block. The concatenation is
one ordinary deflate stream that any inflater reads.

zlib releases the GIL while it compresses and while it computes a CRC-32 of more than a few
KiB, so Python threads use all available cores.
"""

import collections
import concurrent.futures
import math
import os
import pathlib
import struct
import zlib

# The deflate window is the longest match distance, so a zdict longer than this has no use.
WINDOW_SIZE = 32 * 1024

DEFAULT_CHUNK_SIZE = 1 << 20

# Maximum number of chunks submitted but not yet written, per thread. Two keep every worker
# busy while the main thread writes, and memory stays bounded by chunk size times threads.
CHUNKS_IN_FLIGHT_PER_THREAD = 2

_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_METHOD_DEFLATE = 8
_GZIP_OS_UNKNOWN = 255
_GZIP_XFL_SLOWEST = 2
_GZIP_XFL_FASTEST = 4


class ParallelDeflate:
    """Compresses a byte stream into one raw deflate stream, chunk by chunk in a thread pool.

    `write` receives the compressed bytes in order, always in the thread that calls
    `write()` or `finish()`, so its exceptions (a full disk, say) reach that caller.
    It must consume every byte it gets, as the `write` of a buffered file does.
    The caller must call `finish()` to get the final block and the CRC. Leaving a `with`
    block without `finish()` aborts and discards the data not yet written.
    """

    def __init__(
        self,
        write,
        *,
        level=6,
        threads=None,
        zdict=b"",
        chunk_size=DEFAULT_CHUNK_SIZE,
        crc=0,
        length=0,
    ):
        """Start the compressor with `threads` workers, or `available_cpus()` when it is None.

        `zdict` is the uncompressed data just before this stream (only its last 32 KiB
        are used), for continuing a deflate stream whose earlier part already exists.
        `crc` and `length` are the CRC-32 and byte count of that earlier data, so the
        values `finish()` returns cover the whole gzip member.
        """
        if threads is None:
            threads = available_cpus()
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 byte, got {chunk_size}")
        if not -1 <= level <= 9:
            raise ValueError(f"level must be from -1 to 9, got {level}")

        self._write_output = write
        self._level = level
        self._chunk_size = chunk_size
        self._window = bytes(zdict[-WINDOW_SIZE:])
        self._crc = crc
        self._length = length
        self._pending = bytearray()
        self._in_flight = collections.deque()
        self._max_in_flight = CHUNKS_IN_FLIGHT_PER_THREAD * threads
        self._closed = False

        # With one thread the chunks are deflated inline, by the same code, so a
        # one-thread run measures the same algorithm without a pool's overhead.
        self._pool = None
        if threads > 1:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="deflate"
            )

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.abort()

    def write(self, data):
        """Add uncompressed bytes; blocks while too many chunks wait to be written."""
        self._check_open()
        view = memoryview(data).cast("B")
        try:
            while view:
                # A full chunk is only sent once more data follows, so that the last
                # chunk, which carries the final block, is never empty unless the
                # whole stream is.
                if len(self._pending) == self._chunk_size:
                    self._submit(final=False)
                room = self._chunk_size - len(self._pending)
                self._pending += view[:room]
                view = view[room:]
        except BaseException:
            self.abort()
            raise

    def finish(self):
        """Write the last chunk with the final block and return `(crc32, length)`.

        Both values include the `crc` and `length` given to the constructor. The
        length is the full count, not reduced modulo 2**32.
        """
        self._check_open()
        try:
            self._submit(final=True)
            while self._in_flight:
                self._write_oldest()
        except BaseException:
            self.abort()
            raise

        self._close()
        return self._crc, self._length

    def abort(self):
        """Stop the workers and write nothing more. A second call does nothing."""
        for future in self._in_flight:
            future.cancel()
        self._in_flight.clear()
        self._pending = bytearray()
        self._close()

    def _close(self):
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            # Waits for the chunks that workers already started, at most one each.
            # The pool is forgotten first, so a shutdown cut short by a signal is
            # not retried: a second join of the same threads can wait forever.
            pool.shutdown(wait=True, cancel_futures=True)

    def _check_open(self):
        if self._closed:
            raise ValueError("ParallelDeflate is closed: finish() or abort() was called")

    def _submit(self, final):
        chunk = self._pending
        self._pending = bytearray()
        window = self._window
        self._window = _next_window(window, chunk)

        if self._pool is None:
            self._write_output(_deflate_chunk(chunk, window, self._level, final))
        else:
            self._in_flight.append(
                self._pool.submit(_deflate_chunk, chunk, window, self._level, final)
            )

        # Computed here while the workers compress, and in stream order as the CRC needs.
        self._crc = zlib.crc32(chunk, self._crc)
        self._length += len(chunk)

        self._write_finished_chunks()

    def _write_finished_chunks(self):
        while self._in_flight and (
            len(self._in_flight) > self._max_in_flight or self._in_flight[0].done()
        ):
            self._write_oldest()

    def _write_oldest(self):
        future = self._in_flight.popleft()
        self._write_output(future.result())


def _deflate_chunk(chunk, window, level, final):
    """Deflate one chunk as a piece of a larger raw deflate stream, primed with `window`."""
    if window:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=window)
    else:
        compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    mode = zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH
    return compressor.compress(chunk) + compressor.flush(mode)


def _next_window(window, chunk):
    """Return the last 32 KiB of `window` followed by `chunk`."""
    if len(chunk) >= WINDOW_SIZE:
        return bytes(chunk[-WINDOW_SIZE:])
    return (window + bytes(chunk))[-WINDOW_SIZE:]


def gzip_header(level, mtime=0):
    """Return a 10-byte gzip member header with no file name and OS 255 (unknown).

    XFL is 2 for level 9 (slowest) and 4 for level 1 (fastest), as RFC 1952 defines them and
    Python's gzip module sets them, and 0 for other levels.
    """
    if level == 9:
        extra_flags = _GZIP_XFL_SLOWEST
    elif level == 1:
        extra_flags = _GZIP_XFL_FASTEST
    else:
        extra_flags = 0
    flags = 0
    return _GZIP_MAGIC + struct.pack(
        "<BBIBB", _GZIP_METHOD_DEFLATE, flags, mtime & 0xFFFFFFFF, extra_flags, _GZIP_OS_UNKNOWN
    )


def gzip_trailer(crc, length):
    """Return the 8-byte gzip member trailer: CRC-32 and length modulo 2**32, little-endian."""
    return struct.pack("<II", crc & 0xFFFFFFFF, length & 0xFFFFFFFF)


def available_cpus():
    """Return the number of CPUs this process may use, at least 1.

    Takes the CPU affinity mask (which `docker --cpuset-cpus` sets) and, when it is
    lower, the cgroup CPU quota (which `docker --cpus` sets) rounded up.
    """
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 1

    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def _cgroup_cpu_quota(cgroup_root="/sys/fs/cgroup"):
    """Return the cgroup CPU quota in whole CPUs (rounded up), or None when there is none.

    Reads the cgroup v2 file `cpu.max`, then the cgroup v1 files `cpu/cpu.cfs_quota_us`
    and `cpu/cpu.cfs_period_us`, under the usual mount point. Inside a container these
    describe the container's own cgroup.
    """
    # NOTE: a quota set on a parent cgroup, or a cgroup mounted elsewhere, is not seen.
    root = pathlib.Path(cgroup_root)
    try:
        quota_text, period_text = (root / "cpu.max").read_text().split()
    except (OSError, ValueError):
        try:
            quota_text = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period_text = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None

    try:
        quota = int(quota_text)
        period = int(period_text)
    except ValueError:
        # "max" in cgroup v2 means no quota.
        return None
    if quota <= 0 or period <= 0:
        # -1 in cgroup v1 means no quota.
        return None
    return math.ceil(quota / period)
