"""Rewrite the tar stream member by member, with hyperparameters.json at its root.

Two ways to produce the output, chosen per run and logged:

* Fast path (gzip input): the input's compressed bytes are copied to the output
  as they are read. At the first byte that changes (an old hyperparameters.json
  or the end-of-archive marker) the output is cut back to the last deflate block
  boundary before it, and only what follows is deflated again.
* Recompression (bzip2, xz or plain tar input, `--recompress`, or no usable
  block boundary): the whole tar stream is deflated again, in parallel.

Either way the input is read once and every kept member's header blocks and
data are copied byte for byte.
"""

import dataclasses
import logging
import os
import tarfile
import zlib
from pathlib import Path

from app import splice
from app.decompress import WINDOW_SIZE, GzipDecoder, Snapshot, decoder_for
from app.deflate import ParallelDeflate, available_cpus, gzip_header, gzip_trailer
from app.formats import SNIFF_SIZE, Compression, detect
from app.progress import Progress, format_size
from app.publish import OutputFile
from app.safety import LayoutReport, MemberChecker, normalize
from app.tarstream import (ByteStream, Entry, TarReader, forward_data, leading_global_headers,
                           printable)
from app.verify import Verifier

log = logging.getLogger(__name__)

HYPERPARAMETERS_NAME = "hyperparameters.json"
MEMBERS_LISTED = 50


@dataclasses.dataclass(frozen=True)
class Options:
    """How to compress the output."""

    level: int = 6
    threads: int | None = None
    recompress: bool = False

    @property
    def single_threaded(self) -> bool:
        """True when the job may use one thread only: then it starts no helper threads."""
        return (self.threads or available_cpus()) == 1


@dataclasses.dataclass(frozen=True)
class NewMember:
    """The hyperparameters.json member to add at the archive root."""

    data: bytes
    mtime: int

    def blocks(self, global_headers: dict[str, str]) -> bytes:
        """Return the member's header and data blocks: mode 0644, owner 0/0, no owner names.

        Global pax records from the archive apply to every member after them, this
        one included, so each record that would change its name, size, owner or
        time is overridden by a pax record of its own.
        """
        info = tarfile.TarInfo(HYPERPARAMETERS_NAME)
        info.size = len(self.data)
        info.mode = 0o644
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        overridden = {key: str(getattr(info, key if key != "linkpath" else "linkname"))
                      for key in global_headers if key in _OVERRIDDEN_PAX_KEYS}
        if overridden:
            info.pax_headers = overridden
            header = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        else:
            header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
        return header + self.data + _padding(len(self.data))


# The pax keywords that describe a member's identity and metadata (POSIX pax, plus
# atime and ctime, which GNU tar writes).
_OVERRIDDEN_PAX_KEYS = {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime",
                        "atime", "ctime"}


@dataclasses.dataclass
class Result:
    """Counts and the path taken, for the summary log lines."""

    members: int
    tar_size: int
    path_taken: str


class _NoSplicePoint(Exception):
    """The fast path found no usable block boundary; the caller recompresses everything."""


def repack(model: Path, new_member: NewMember, output: OutputFile, options: Options) -> Result:
    """Write the repacked archive of `model` to `output` and verify it."""
    if options.recompress:
        return _Rewriter(model, new_member, output, options, "--recompress was given").run()
    try:
        return _Rewriter(model, new_member, output, options).run()
    except _NoSplicePoint as exc:
        log.warning("Fast path not possible: %s; recompressing the whole archive", exc)
        output.truncate(0)
        return _Rewriter(model, new_member, output, options, str(exc)).run()


class _Rewriter:
    """One pass over the input: walk members, copy or drop them, write the output."""

    def __init__(self, model: Path, new_member: NewMember, output: OutputFile,
                 options: Options, recompress_reason: str | None = None) -> None:
        self.model = model
        self.new_member = new_member
        self.output = output
        self.options = options
        self.recompress_reason = recompress_reason
        self.fast = recompress_reason is None
        self.deflate: ParallelDeflate | None = None
        self.verifier: Verifier | None = None
        self.tar_size = 0
        self.global_headers: dict[str, str] = {}
        self.path_taken = ""

    def run(self) -> Result:
        with (open(self.model, "rb") as file,
              MemberChecker(self.model.name, HYPERPARAMETERS_NAME) as checker):
            compression = detect(self.model, file.read(SNIFF_SIZE))
            file.seek(0)
            progress = Progress(self.model, os.fstat(file.fileno()).st_size)
            self.fast = self.fast and compression is Compression.GZIP
            self.decoder = decoder_for(compression, file, self.model, self._on_read(progress))
            log.info("Reading %s (%s, %s)", self.model, compression.value,
                     format_size(progress.total))
            if not self.fast:
                self._start_recompression(self.recompress_reason or
                                          f"the input is {compression.value}, not gzip")
            try:
                members = self._copy_members(checker)
                self._finish()
            finally:
                if self.deflate is not None:
                    self.deflate.abort()
                if self.verifier is not None:
                    self.verifier.close()
            progress.done()
        return Result(members + 1, self.tar_size, self.path_taken)

    def _on_read(self, progress: Progress):
        def on_read(data: bytes) -> None:
            if self.fast and self.deflate is None:
                self.output.write_behind(data)
            progress.update(len(data))
        return on_read

    def _copy_members(self, checker: MemberChecker) -> int:
        stream = ByteStream(self.decoder.chunks())
        reader = TarReader(stream, self.model)
        layout = LayoutReport(self.model.name)
        kept = 0
        data_size = 0
        for entry in reader.members():
            checker.check(entry.info)
            layout.add(entry.info)
            _log_member(entry, kept)
            if _is_root_hyperparameters(entry):
                log.info("Replacing the archive's own %s (member %s at tar offset %d)",
                         HYPERPARAMETERS_NAME, printable(entry.info.name), entry.offset)
                self._change_at(entry.offset)
                # Global pax headers in front of the dropped member still apply to later ones.
                self._write_tar(leading_global_headers(entry.header))
                forward_data(stream, entry, self.model, None)
                continue
            sink = self._write_tar if self.deflate is not None else None
            if sink is not None:
                sink(entry.header)
            forward_data(stream, entry, self.model, sink)
            kept += 1
            data_size += entry.info.size if entry.info.isreg() else 0

        if not reader.marker_found:
            log.warning("%s has no end-of-archive marker; the archive may be cut short, "
                        "but every member is complete", self.model)
        self._change_at(reader.end_of_archive)
        reader.check_trailing_zeros()
        self.global_headers = reader.global_headers
        if kept > MEMBERS_LISTED:
            log.info("... and %d more members", kept - MEMBERS_LISTED)
        log.info("Kept %d members holding %s of file data", kept, format_size(data_size))
        layout.log_warnings()
        return kept

    def _write_tar(self, data: bytes | memoryview) -> None:
        self.deflate.write(data)
        self.tar_size += len(data)

    def _change_at(self, offset: int) -> None:
        """Make sure output from tar offset `offset` on goes through the deflate stream."""
        if self.deflate is None:
            self._splice(offset)

    def _start_recompression(self, reason: str) -> None:
        self.path_taken = f"recompressed the whole archive ({reason})"
        log.info("Recompressing the whole archive because %s", reason)
        self.output.write(gzip_header(self.options.level))
        self.verifier = Verifier(zlib.decompressobj(-zlib.MAX_WBITS), 0, 0,
                                 inline=self.options.single_threaded)
        self.deflate = ParallelDeflate(self._write_deflated, level=self.options.level,
                                       threads=self.options.threads)

    def _write_deflated(self, data: bytes) -> None:
        self.output.write(data)
        self.verifier.feed(data)

    def _splice(self, change: int) -> None:
        """Cut the copied compressed bytes back to a block boundary before `change`."""
        decoder = self.decoder
        member = decoder.member
        point = find_splice_point(decoder, change)

        start = point.start
        self.output.truncate(point.bit // 8)
        self.verifier = Verifier(start.decompressor.copy(), start.crc,
                                 start.plain - member.plain_offset,
                                 inline=self.options.single_threaded)
        self.verifier.feed(self.output.read_back(start.offset, point.bit // 8 - start.offset))
        self._write_deflated(point.closing)

        crc = zlib.crc32(decoder.history(start.plain, point.plain), start.crc)
        window = decoder.history(max(point.plain - WINDOW_SIZE, member.plain_offset), point.plain)
        self.deflate = ParallelDeflate(self._write_deflated, level=self.options.level,
                                       threads=self.options.threads, zdict=window, crc=crc,
                                       length=point.plain - member.plain_offset)
        self.tar_size = point.plain
        self._write_tar(decoder.history(point.plain, change))

        kept = format_size(point.bit // 8)
        self.path_taken = (f"fast path: kept the input's first {kept} of compressed data, "
                           f"deflated again from tar offset {point.plain}")
        log.info("Fast path: keeping the input's first %s of compressed data and deflating "
                 "again from tar offset %d (first change at %d)", kept, point.plain, change)

    def _finish(self) -> None:
        self._write_tar(self.new_member.blocks(self.global_headers))
        self._write_tar(_end_of_archive(self.tar_size))
        crc, length = self.deflate.finish()
        self.deflate = None
        self.verifier.check(crc, length, str(self.output.destination))
        self.output.write(gzip_trailer(crc, length))


@dataclasses.dataclass(frozen=True)
class SplicePoint:
    """The point at which the fast path cuts the input's deflate stream."""

    start: Snapshot     # the decoder state the search region began at
    bit: int            # absolute bit offset in the file of the block boundary
    plain: int          # tar offset of the first byte that block produces
    closing: bytes      # what to write after byte bit // 8 to end the kept bits cleanly


def find_splice_point(decoder: GzipDecoder, change: int) -> SplicePoint:
    """Return the last deflate block boundary before tar offset `change`.

    The search runs over the compressed bytes from one of the decoder's
    snapshots (newest first) to the newest clean point: the end of the member's
    deflate data if it was reached, else the newest snapshot.
    """
    member = decoder.member
    if change < member.plain_offset:
        raise _NoSplicePoint(f"tar offset {change} lies in an earlier gzip member than the one "
                             "being read")
    snapshots = list(decoder.snapshots)
    anchor = decoder.member_end
    if anchor is None and snapshots:
        anchor = snapshots.pop()
    for start in reversed(snapshots):
        if start.plain > change:
            continue
        history_start = _window_before(start, member)
        try:
            history = decoder.history(history_start, max(anchor.plain, change))
        except LookupError:
            break
        history = history[:anchor.plain - history_start]
        # The bytes come back from the page cache: they were read moments ago.
        compressed = os.pread(decoder.file.fileno(), anchor.offset - start.offset, start.offset)
        boundary = splice.find_block_boundary(
            compressed, history, change - history_start,
            history_at_stream_start=history_start == member.plain_offset,
            stream_ends=anchor is decoder.member_end)
        if boundary is not None:
            closing = splice.close_with_empty_stored_block(compressed, boundary.bit)
            return SplicePoint(start, start.offset * 8 + boundary.bit,
                               history_start + boundary.plain, closing)
    raise _NoSplicePoint(f"no deflate block boundary found before tar offset {change} in the "
                         "compressed data still held")


def _window_before(start: Snapshot, member) -> int:
    return max(start.plain - WINDOW_SIZE, member.plain_offset)


def _is_root_hyperparameters(entry: Entry) -> bool:
    return normalize(entry.info.name) == HYPERPARAMETERS_NAME and not entry.info.isdir()


def _log_member(entry: Entry, index: int) -> None:
    if index >= MEMBERS_LISTED:
        return
    info = entry.info
    if info.isdir():
        kind = "folder"
    elif info.issym() or info.islnk():
        kind = f"link to {printable(info.linkname)}"
    else:
        kind = format_size(info.size)
    log.info("Member %s (%s)", printable(info.name), kind)


def _padding(size: int) -> bytes:
    return b"\x00" * (-size % tarfile.BLOCKSIZE)


def _end_of_archive(tar_size: int) -> bytes:
    """Return the end-of-archive marker, padded to a whole record as GNU tar and tarfile do."""
    size = tar_size + 2 * tarfile.BLOCKSIZE
    return b"\x00" * (2 * tarfile.BLOCKSIZE + (-size % tarfile.RECORDSIZE))
