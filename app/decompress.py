"""Decompress the model file into its tar stream, checking every integrity field on the way.

Each decoder yields the tar stream as a series of `bytes` chunks and reads its
input exactly once. The gzip decoder also keeps what the fast path needs to
splice a new ending onto the input's own deflate stream: recent uncompressed
output and copies of the decompressor taken at clean points (see `Snapshot`).
"""

import bz2
import collections
import dataclasses
import lzma
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from app.errors import ErrorCode, RepackError
from app.formats import Compression

READ_SIZE = 1 << 20
# Input is fed to a decompressor in slices, so that a slice of highly compressible
# data (gzip reaches 1:1032 on zeros) yields a bounded amount of output per call.
FEED_SIZE = 1 << 16
MIN_FEED_SIZE = 1 << 10
MAX_OUTPUT = 1 << 20

WINDOW_SIZE = 1 << 15
# A snapshot every MiB of output, eight kept: the fast path searches the last
# few MiB for a block boundary, and the output held for it stays near 10 MiB.
SNAPSHOT_INTERVAL = 1 << 20
SNAPSHOTS_KEPT = 8
# Highly compressible data can go a long way between snapshots; past this much
# held output the oldest snapshots are given up so memory stays bounded.
RECENT_LIMIT = 16 << 20

GZIP_MAGIC = b"\x1f\x8b"
_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16


def decoder_for(compression: Compression, file: BinaryIO, path: Path,
                on_read: Callable[[bytes], None] | None = None) -> "Decoder":
    """Return the decoder for a model file compressed with `compression`.

    `on_read` receives every chunk of the file, in order, as it is read.
    """
    decoders = {
        Compression.GZIP: GzipDecoder,
        Compression.BZIP2: Bzip2Decoder,
        Compression.XZ: XzDecoder,
        Compression.NONE: PlainDecoder,
    }
    return decoders[compression](file, path, on_read)


class Decoder:
    """Reads a compressed model file; iterate `chunks()` for the tar stream."""

    def __init__(self, file: BinaryIO, path: Path,
                 on_read: Callable[[bytes], None] | None = None) -> None:
        self.file = file
        self.path = path
        self.on_read = on_read
        self.bytes_read = 0

    def chunks(self) -> Iterator[bytes]:
        raise NotImplementedError

    def _read(self) -> bytes:
        data = self.file.read(READ_SIZE)
        self.bytes_read += len(data)
        if data and self.on_read is not None:
            self.on_read(data)
        return data

    def _damaged(self, problem: str) -> RepackError:
        return RepackError(ErrorCode.INVALID_ARCHIVE,
                           f"{self.path} is damaged: {problem}; the file was probably cut short "
                           "or corrupted in transfer, so copy or create it again")


class PlainDecoder(Decoder):
    """An uncompressed tar stream."""

    def chunks(self) -> Iterator[bytes]:
        while data := self._read():
            yield data


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The gzip decoder's state at a point where it had consumed `offset` bytes of the file.

    A snapshot is taken only when the decompressor had used up its input and
    produced all the output that input decodes to, so `plain` uncompressed bytes
    correspond exactly to the compressed bytes before `offset`.
    """

    offset: int
    plain: int
    crc: int
    decompressor: "zlib._Decompress"


@dataclasses.dataclass
class GzipMember:
    """One gzip member of the input: where its deflate data starts, in the file and uncompressed."""

    index: int
    offset: int
    deflate_offset: int
    plain_offset: int


class GzipDecoder(Decoder):
    """A gzip file of one or more members; checks each member's CRC-32 and length.

    Zero bytes after the last member are padding, as gzip(1) treats them;
    anything else there is damage.
    """

    def __init__(self, file: BinaryIO, path: Path,
                 on_read: Callable[[bytes], None] | None = None) -> None:
        super().__init__(file, path, on_read)
        self.member: GzipMember | None = None
        # Set when the current member's deflate data has ended: where it ended, as a snapshot.
        self.member_end: Snapshot | None = None
        self.members = 0
        self.plain_offset = 0
        self.snapshots: collections.deque[Snapshot] = collections.deque(maxlen=SNAPSHOTS_KEPT)
        # Recent uncompressed output, as (offset, chunk), reaching a window before the oldest snapshot.
        self.recent: collections.deque[tuple[int, bytes]] = collections.deque()
        self._recent_size = 0
        self._buffer = b""
        self._position = 0
        self._offset = 0

    def chunks(self) -> Iterator[bytes]:
        while self._start_member():
            yield from self._inflate_member()
            self._check_trailer()

    def history(self, start: int, end: int) -> bytes:
        """Return uncompressed bytes [start, end) of the tar stream from the recent output."""
        parts = []
        for offset, chunk in self.recent:
            if offset + len(chunk) <= start or offset >= end:
                continue
            parts.append(chunk[max(start - offset, 0):end - offset])
        data = b"".join(parts)
        if len(data) != end - start:
            raise LookupError(f"bytes {start}..{end} are no longer held")
        return data

    @property
    def _pending(self) -> memoryview:
        """The bytes read from the file but not yet consumed."""
        return memoryview(self._buffer)[self._position:]

    def _fill(self, size: int) -> bool:
        """Make at least `size` unconsumed bytes available; return False at end of file."""
        while len(self._buffer) - self._position < size:
            data = self._read()
            if not data:
                return False
            self._buffer = self._buffer[self._position:] + data
            self._position = 0
        return True

    def _consume(self, size: int) -> bytes:
        data = self._buffer[self._position:self._position + size]
        self._position += size
        self._offset += size
        return data

    def _start_member(self) -> bool:
        if not self._fill(1):
            return False
        if not (self._fill(2) and bytes(self._pending[:2]) == GZIP_MAGIC):
            self._check_padding()
            return False

        offset = self._offset
        header_size = self._header_size(offset)
        self._consume(header_size)
        self.member = GzipMember(self.members, offset, self._offset, self.plain_offset)
        self.members += 1
        self.member_end = None
        self.snapshots.clear()
        self.snapshots.append(Snapshot(self._offset, self.plain_offset, 0,
                                       zlib.decompressobj(-zlib.MAX_WBITS)))
        return True

    def _header_size(self, offset: int) -> int:
        if not self._fill(10):
            raise self._damaged(f"the gzip header at byte {offset} is cut short")
        method, flags = self._pending[2], self._pending[3]
        if method != 8:
            raise self._damaged(f"the gzip member at byte {offset} uses compression method "
                                f"{method}; only deflate (8) exists")
        if flags & 0xE0:
            raise self._damaged(f"the gzip header at byte {offset} sets reserved flag bits")
        size = 10
        if flags & _FEXTRA:
            if not self._fill(size + 2):
                raise self._damaged(f"the gzip header at byte {offset} is cut short")
            size += 2 + int.from_bytes(bytes(self._pending[size:size + 2]), "little")
        for flag in (_FNAME, _FCOMMENT):
            if flags & flag:
                size = self._find_nul(size, offset) + 1
        if flags & _FHCRC:
            size += 2
        if not self._fill(size):
            raise self._damaged(f"the gzip header at byte {offset} is cut short")
        if flags & _FHCRC:
            header = bytes(self._pending[:size])
            if zlib.crc32(header[:-2]) & 0xFFFF != int.from_bytes(header[-2:], "little"):
                raise self._damaged(f"the gzip header at byte {offset} fails its header CRC")
        return size

    def _find_nul(self, start: int, offset: int) -> int:
        while (end := self._buffer.find(b"\x00", self._position + start) - self._position) < 0:
            if len(self._pending) > (1 << 16) or not self._fill(len(self._pending) + 1):
                raise self._damaged(f"the gzip header at byte {offset} has an unterminated name "
                                    "or comment field")
        return end

    def _inflate_member(self) -> Iterator[bytes]:
        member = self.member
        decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
        crc = 0
        next_snapshot = self.plain_offset + SNAPSHOT_INTERVAL
        feed_size = FEED_SIZE
        while not decompressor.eof:
            if not self._fill(1):
                raise self._damaged(f"the gzip member at byte {member.offset} ends at byte "
                                    f"{self._offset} before its deflate data is complete")
            piece = self._pending[:feed_size]
            try:
                output = decompressor.decompress(piece, MAX_OUTPUT)
            except zlib.error as exc:
                raise self._damaged(f"invalid deflate data in the gzip member at byte "
                                    f"{member.offset}, near byte {self._offset} ({exc})") from None
            left = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
            self._consume(len(piece) - len(left))

            if output:
                crc = zlib.crc32(output, crc)
                self._remember(output)
            if decompressor.eof:
                self.member_end = Snapshot(self._offset, self.plain_offset, crc, None)
            elif not left and len(output) < MAX_OUTPUT and self.plain_offset >= next_snapshot:
                self._snapshot(crc, decompressor)
                next_snapshot = self.plain_offset + SNAPSHOT_INTERVAL
            # Feed less after a call that filled its output, so that even highly
            # compressible data reaches clean points (input used up) for snapshots.
            if left and len(output) == MAX_OUTPUT:
                feed_size = max(feed_size // 4, MIN_FEED_SIZE)
            elif feed_size < FEED_SIZE and len(output) < MAX_OUTPUT // 4:
                feed_size *= 2
            if output:
                yield output
        self._member_crc = crc

    def _remember(self, output: bytes) -> None:
        self.recent.append((self.plain_offset, output))
        self._recent_size += len(output)
        self.plain_offset += len(output)
        while self._recent_size > RECENT_LIMIT and self.snapshots:
            self.snapshots.popleft()
            self._trim_recent()
        if not self.snapshots:
            self._trim_recent()

    def _snapshot(self, crc: int, decompressor: "zlib._Decompress") -> None:
        self.snapshots.append(Snapshot(self._offset, self.plain_offset, crc, decompressor.copy()))
        self._trim_recent()

    def _trim_recent(self) -> None:
        """Drop held output that no snapshot's window reaches, keeping at most RECENT_LIMIT."""
        if self.snapshots:
            keep_from = self.snapshots[0].plain - WINDOW_SIZE
        else:
            keep_from = self.plain_offset - RECENT_LIMIT
        while self.recent and self.recent[0][0] + len(self.recent[0][1]) <= keep_from:
            self._recent_size -= len(self.recent.popleft()[1])

    def _check_trailer(self) -> None:
        member = self.member
        if not self._fill(8):
            raise self._damaged(f"the gzip member at byte {member.offset} lacks its 8-byte "
                                f"trailer (CRC-32 and length) at byte {self._offset}")
        trailer_offset = self._offset
        trailer = self._consume(8)
        crc = int.from_bytes(trailer[:4], "little")
        size = int.from_bytes(trailer[4:], "little")
        if crc != self._member_crc:
            raise self._damaged(f"CRC-32 mismatch in the gzip member at byte {member.offset}: "
                                f"the trailer at byte {trailer_offset} says {crc:08x}, "
                                f"the data gives {self._member_crc:08x}")
        actual = (self.plain_offset - member.plain_offset) & 0xFFFFFFFF
        if size != actual:
            raise self._damaged(f"length mismatch in the gzip member at byte {member.offset}: "
                                f"the trailer says {size} bytes (mod 2**32), the data has {actual}")

    def _check_padding(self) -> None:
        while True:
            nonzero = bytes(self._pending).lstrip(b"\x00")
            if nonzero:
                offset = self._offset + len(self._pending) - len(nonzero)
                raise self._damaged(f"unexpected data at byte {offset}, after the last gzip member "
                                    f"(starting {nonzero[:4].hex(' ')}); only zero padding may "
                                    "follow it")
            self._consume(len(self._pending))
            if not self._fill(1):
                return


class _StreamDecoder(Decoder):
    """A bzip2 or xz file, possibly of several concatenated streams."""

    format_name = ""

    def _new_decompressor(self):
        raise NotImplementedError

    def _is_stream_start(self, data: bytes) -> bool:
        raise NotImplementedError

    def chunks(self) -> Iterator[bytes]:
        decompressor = self._new_decompressor()
        pending = b""
        while True:
            if decompressor.eof:
                pending = decompressor.unused_data + pending
                if not pending and not (pending := self._read()):
                    return
                pending = self._skip_padding(pending)
                if not pending:
                    return
                if not self._is_stream_start(pending):
                    raise self._damaged(f"unexpected data after a {self.format_name} stream, "
                                        f"before byte {self.bytes_read}")
                decompressor = self._new_decompressor()
            if not pending and decompressor.needs_input:
                pending = self._read()
                if not pending:
                    raise self._damaged(f"the {self.format_name} stream ends at byte "
                                        f"{self.bytes_read} before it is complete")
            try:
                output = decompressor.decompress(pending, MAX_OUTPUT)
            except (OSError, EOFError, lzma.LZMAError) as exc:
                raise self._damaged(f"invalid {self.format_name} data before byte "
                                    f"{self.bytes_read} ({exc})") from None
            pending = b""
            if output:
                yield output

    def _skip_padding(self, pending: bytes) -> bytes:
        """Skip zero bytes between or after streams (xz calls them stream padding)."""
        while True:
            pending = pending.lstrip(b"\x00")
            if pending:
                return pending
            if not (pending := self._read()):
                return b""


class Bzip2Decoder(_StreamDecoder):
    format_name = "bzip2"

    def _new_decompressor(self):
        return bz2.BZ2Decompressor()

    def _is_stream_start(self, data: bytes) -> bool:
        return data.startswith(b"BZh")


class XzDecoder(_StreamDecoder):
    format_name = "xz"

    def _new_decompressor(self):
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def _is_stream_start(self, data: bytes) -> bool:
        return data.startswith(b"\xfd7zXZ\x00")
