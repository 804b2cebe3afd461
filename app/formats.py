"""Recognise the model file's format from its first bytes."""

import enum
import tarfile
from pathlib import Path

from app.errors import ErrorCode, RepackError

SNIFF_SIZE = tarfile.BLOCKSIZE


class Compression(enum.Enum):
    """The compression of the tar stream inside the model file."""

    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"
    NONE = "none"


_COMPRESSED = [
    (b"\x1f\x8b", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
    (b"\xfd7zXZ\x00", Compression.XZ),
]

# Formats people upload by mistake, with what to do about each.
_NOT_TAR = [
    (b"PK\x03\x04", "a ZIP archive; create the archive with `tar czf model.tar.gz ...`"),
    (b"PK\x05\x06", "an empty ZIP archive; create the archive with `tar czf model.tar.gz ...`"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed; recompress it with gzip: "
                          "`zstd -dc model.tar.zst | gzip > model.tar.gz`"),
    (b"\x04\x22\x4d\x18", "LZ4-compressed; recompress it with gzip"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive; create the archive with `tar czf model.tar.gz ...`"),
    (b"\x1f\x9d", "compressed with Unix compress (.Z); recompress it with gzip"),
    (b"\x89HDF", "an HDF5 file, not an archive; put it in a tar archive: "
                 "`tar czf model.tar.gz model.h5`"),
]


def detect(path: Path, head: bytes) -> Compression:
    """Return the compression of the tar stream in `path`, whose file starts with `head`.

    Raises INVALID_FORMAT, saying what the file looks like, when it is not a tar
    archive in a form this job reads.
    """
    for magic, compression in _COMPRESSED:
        if head.startswith(magic):
            return compression
    if is_tar_header(head) or _is_zero_block(head):
        # An all-zero first block is an archive with no members: rejected later,
        # by the tar reader, with INVALID_ARCHIVE.
        return Compression.NONE
    raise RepackError(ErrorCode.INVALID_FORMAT,
                      f"{path} is {describe(head)}, not a tar archive (gzip, bzip2, xz or "
                      "uncompressed); expected a model.tar.gz made with `tar czf`")


def describe(head: bytes) -> str:
    """Say in a few words what a file that starts with `head` looks like."""
    if not head:
        return "an empty file (0 bytes); the upload or copy probably failed"
    for magic, description in _NOT_TAR:
        if head.startswith(magic):
            return description
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return ("an HTML or XML page, probably an error page saved by a download; "
                "download the file again")
    if text.startswith((b"version https://git-lfs", b"version http://git-lfs")):
        return "a Git LFS pointer, not the file it points to; run `git lfs pull`"
    if _looks_like_text(head):
        return f"a text file starting with {_preview(head)}"
    return f"binary data starting with {head[:8].hex(' ')}"


def is_tar_header(head: bytes) -> bool:
    """Tell whether `head` starts with a tar header block that tarfile accepts."""
    if len(head) < tarfile.BLOCKSIZE:
        return False
    try:
        tarfile.TarInfo.frombuf(head[:tarfile.BLOCKSIZE], tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def _is_zero_block(head: bytes) -> bool:
    return len(head) == tarfile.BLOCKSIZE and not any(head)


def _looks_like_text(head: bytes) -> bool:
    # The sniffed bytes may end inside a multi-byte character.
    text = head.decode("utf-8", errors="ignore")
    if len(text.encode("utf-8")) < len(head) - 3:
        return False
    return all(char.isprintable() or char in "\t\r\n" for char in text)


def _preview(head: bytes) -> str:
    lines = head.decode("utf-8", errors="ignore").strip().splitlines()
    return repr(lines[0][:40] if lines else "")
