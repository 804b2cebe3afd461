"""Walk the members of a tar stream with tarfile's header parser, keeping their raw bytes.

tarfile's own iteration stops quietly at a damaged header, and it needs a
seekable file. This reader drives `tarfile.TarInfo.fromtarfile` over a
forward-only stream instead. Every header block passes through it exactly as
read, and every damaged header becomes an error with its byte offset.
"""

import dataclasses
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from app.errors import ErrorCode, RepackError
from app.formats import describe, is_tar_header

BLOCK = tarfile.BLOCKSIZE
# Extended headers (pax records, GNU long names) are read into memory. Real ones
# are a few KiB, so a larger one is damage or an attempt to exhaust memory.
MAX_HEADER_DATA = 16 << 20

Sink = Callable[[bytes | memoryview], object]
# Longer member names are cut in log lines and messages (CloudWatch takes at most
# 256 KiB per event, and the failure message at most 1 KiB).
MAX_PRINTED_NAME = 300


class ByteStream:
    """A forward-only view of the tar stream, fed by a decoder's chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._chunk = memoryview(b"")
        self._position = 0
        self._offset = 0
        self._record: list[bytes] | None = None

    def tell(self) -> int:
        return self._offset

    def read(self, size: int) -> bytes:
        """Read up to `size` bytes; fewer only at the end of the stream."""
        if size > MAX_HEADER_DATA:
            raise RepackError(ErrorCode.INVALID_ARCHIVE,
                              f"a header before byte {self._offset} declares {size} bytes of "
                              f"extended header data, more than the {MAX_HEADER_DATA >> 20} MiB "
                              "limit; the archive is damaged")
        parts = []
        self.forward(size, parts.append)
        data = b"".join(parts)
        if self._record is not None:
            self._record.append(data)
        return data

    def forward(self, size: int, sink: Sink | None) -> int:
        """Pass the next `size` bytes to `sink` (or drop them); return how many there were."""
        left = size
        while left:
            available = len(self._chunk) - self._position
            if not available:
                if not self._next_chunk():
                    break
                continue
            take = min(left, available)
            if sink is not None:
                sink(self._chunk[self._position:self._position + take])
            self._position += take
            self._offset += take
            left -= take
        return size - left

    def start_recording(self) -> None:
        self._record = []

    def stop_recording(self) -> bytes:
        data = b"".join(self._record)
        self._record = None
        return data

    def _next_chunk(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._chunk = memoryview(chunk)
                self._position = 0
                return True
        return False


class _TarFileFields:
    """The attributes of a TarFile that `TarInfo.fromtarfile` reads and sets.

    CPython 3.11 to 3.13 use exactly these: `fileobj` (read and tell), `encoding`
    and `errors` for names, `pax_headers` for global pax records, and `offset`,
    which the parser sets to the position of the next header.
    """

    def __init__(self, fileobj: ByteStream) -> None:
        self.fileobj = fileobj
        self.encoding = tarfile.ENCODING
        self.errors = "surrogateescape"
        self.pax_headers: dict[str, str] = {}
        self.offset = 0


@dataclasses.dataclass
class Entry:
    """One member: its parsed header, the raw header blocks, and where its data lies."""

    info: tarfile.TarInfo
    offset: int
    header: bytes
    data_size: int

    @property
    def end(self) -> int:
        return self.offset + len(self.header) + self.data_size


class TarReader:
    """Reads members one at a time; the caller forwards each member's data before the next."""

    def __init__(self, stream: ByteStream, path: Path) -> None:
        self.stream = stream
        self.path = path
        self._fields = _TarFileFields(stream)
        self.end_of_archive: int | None = None
        self.marker_found = False

    @property
    def global_headers(self) -> dict[str, str]:
        """The pax records of the global headers read so far; they apply to every later member."""
        return self._fields.pax_headers

    def members(self) -> Iterator[Entry]:
        """Yield each member; after the last one, `end_of_archive` is the marker's offset."""
        while (entry := self._next()) is not None:
            yield entry
            if self.stream.tell() != entry.end:
                raise AssertionError("the member's data was not forwarded before the next header")

    def check_trailing_zeros(self) -> None:
        """Check that only zero bytes follow the end-of-archive marker."""
        offset = self.stream.tell()
        nonzero: list[int] = []

        def find_nonzero(data: memoryview) -> None:
            if not nonzero and (stripped := bytes(data).lstrip(b"\x00")):
                nonzero.append(offset + len(data) - len(stripped))

        while not nonzero:
            before = self.stream.tell()
            if not self.stream.forward(1 << 20, find_nonzero):
                return
            offset += self.stream.tell() - before
        raise RepackError(ErrorCode.INVALID_ARCHIVE,
                          f"{self.path} has data at tar offset {nonzero[0]}, after the "
                          f"end-of-archive marker at offset {self.end_of_archive}: the archive "
                          "is damaged or two archives were concatenated; create it again")

    def _next(self) -> Entry | None:
        offset = self.stream.tell()
        self.stream.start_recording()
        try:
            info = tarfile.TarInfo.fromtarfile(self._fields)
        except tarfile.EOFHeaderError:
            self.stream.stop_recording()
            return self._end(offset)
        except tarfile.EmptyHeaderError:
            self.stream.stop_recording()
            return self._end(offset, marker=False)
        except tarfile.HeaderError as exc:
            header = self.stream.stop_recording()
            if offset == 0 and not is_tar_header(header[:BLOCK]):
                raise RepackError(ErrorCode.INVALID_FORMAT,
                                  f"{self.path} decompresses to {describe(header)}, not a tar "
                                  "archive; create it with `tar czf model.tar.gz -C <model "
                                  "folder> .` rather than compressing a single file") from None
            raise RepackError(ErrorCode.INVALID_ARCHIVE,
                              f"{self.path} has an invalid tar header at offset {offset} "
                              f"({exc}); the archive is damaged, create it again") from None
        except RepackError:
            raise
        except Exception as exc:
            # tarfile's pax and sparse parsers raise ValueError, OverflowError and
            # others on some malformed records, instead of a HeaderError.
            self.stream.stop_recording()
            raise RepackError(ErrorCode.INVALID_ARCHIVE,
                              f"{self.path} has a malformed extended header at offset {offset} "
                              f"({type(exc).__name__}: {exc}); the archive is damaged, "
                              "create it again") from None
        header = self.stream.stop_recording()
        self._check_global_headers(offset)

        data_end = self._fields.offset
        consumed = self.stream.tell()
        if data_end < consumed:
            raise RepackError(ErrorCode.INVALID_ARCHIVE,
                              f"{self.path} has an inconsistent tar header for "
                              f"{printable(info.name)} at offset {offset}")
        return Entry(info, offset, header, data_end - consumed)

    def _check_global_headers(self, offset: int) -> None:
        """Reject global pax records that would give every later member one name or size."""
        keys = {key for key in self._fields.pax_headers
                if key in ("path", "linkpath", "size") or key.startswith("GNU.sparse.")}
        if keys:
            raise RepackError(ErrorCode.INVALID_ARCHIVE,
                              f"{self.path} has a global pax header before tar offset {offset} "
                              f"that sets {', '.join(sorted(keys))} for every later member; "
                              "create the archive again without it")

    def _end(self, offset: int, marker: bool = True) -> None:
        """Record where the archive ends; `marker` is True when a zero block ends it."""
        if offset == 0:
            raise RepackError(ErrorCode.INVALID_ARCHIVE,
                              f"{self.path} contains no members: the tar stream is "
                              f"{'empty' if not marker else 'only zero blocks'}; "
                              "create the archive from the model's files")
        self.end_of_archive = offset
        self.marker_found = marker
        return None


def forward_data(stream: ByteStream, entry: Entry, path: Path, sink: Sink | None) -> None:
    """Pass the member's data blocks to `sink` (or drop them), failing if the stream ends early."""
    done = stream.forward(entry.data_size, sink)
    if done != entry.data_size:
        raise RepackError(ErrorCode.INVALID_ARCHIVE,
                          f"{path} is truncated: member {printable(entry.info.name)} needs "
                          f"{entry.data_size} bytes of data at tar offset "
                          f"{entry.offset + len(entry.header)}, but the stream ends "
                          f"{entry.data_size - done} bytes short; copy or create it again")


def leading_global_headers(header: bytes) -> bytes:
    """Return the global pax header blocks ('g') at the start of a member's raw header blocks."""
    size = 0
    while header[size + 156:size + 157] == tarfile.XGLTYPE:
        info = tarfile.TarInfo.frombuf(header[size:size + BLOCK], tarfile.ENCODING,
                                       "surrogateescape")
        size += BLOCK + -(-info.size // BLOCK) * BLOCK
    return header[:size]


def printable(name: str) -> str:
    """Return a member name fit for one log line: undecodable bytes and controls escaped."""
    if len(name) > MAX_PRINTED_NAME:
        hidden = len(name) - MAX_PRINTED_NAME
        return f"{printable(name[:MAX_PRINTED_NAME])}... ({hidden} more characters)"
    if name.isprintable():
        return name
    # Bytes that were not UTF-8 come back from tarfile as surrogates: show them as \xNN.
    raw = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in raw)
