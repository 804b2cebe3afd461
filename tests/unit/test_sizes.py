"""Large and sparse members: the job keeps their headers and data exactly.

A member over 8 GiB needs a size field beyond the 11 octal digits of ustar:
GNU tar writes it in base-256, pax in a `size` record. The test archive is
built from deflate pieces compressed once and repeated, so it takes a few MB
of disk and no 8 GiB deflate. The job still inflates all of it.
"""

import dataclasses
import gzip
import hashlib
import io
import random
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest

from tests import archives
from tests.unit.conftest import assert_repacked

HYPERPARAMETERS = b'{"epochs": "3"}'

MIB = 1 << 20
WINDOW = 1 << 15
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"

# 8 GiB of zero pieces, then an odd-sized rest, so the size is not a whole
# number of blocks and the member's last bytes are not zeros.
ZERO_PIECES = 8192
REST_ZEROS = 12345
LAST_BYTES = b"the last bytes of the big member\n"
BIG_SIZE = ZERO_PIECES * MIB + REST_ZEROS + len(LAST_BYTES)
# The output is checked from this many zero pieces before the last one. The
# fast path splices in the data after them, so the output still has them.
CHECKED_PIECES = 4


def deflate_piece(data: bytes, flush: int) -> bytes:
    """Deflate `data` with no history; ending with a full flush makes pieces concatenable."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(flush)


@dataclasses.dataclass
class BigModel:
    """A gzip model holding a member over 8 GiB, and where its zero pieces lie."""

    header: bytes            # the big member's raw header blocks
    kept_rest: bytes         # what the output keeps after the last zero piece
    checkpoint: int          # file offset of a zero piece boundary near the end
    checkpoint_plain: int    # tar offset of that boundary
    checkpoint_crc: int      # CRC-32 of the tar stream before it


def write_big_model(path: Path, tar_format: int) -> BigModel:
    """Write a model whose big.bin member has BIG_SIZE bytes: a header, zeros, LAST_BYTES.

    A member of random bytes follows big.bin, so a wrong size would misplace
    its header. Its blocks compress about 1:1, which gives the fast path the
    decoder snapshots it needs near the end (see the zero-run test below).
    """
    info = tarfile.TarInfo("big.bin")
    info.size, info.mtime, info.mode = BIG_SIZE, 1_700_000_000, 0o644
    header = info.tobuf(tar_format, "utf-8", "surrogateescape")
    data_end = bytes(REST_ZEROS) + LAST_BYTES + bytes(-BIG_SIZE % tarfile.BLOCKSIZE)
    after = archives.tar_bytes([archives.file("after.bin", random.Random(8).randbytes(6 * MIB))],
                               tar_format)
    after_member = archives.raw_members(after)[0][1]
    rest = data_end + after

    zero_piece = deflate_piece(bytes(MIB), zlib.Z_FULL_FLUSH)
    zeros_crc = [zlib.crc32(header)]
    with path.open("wb") as file:
        file.write(GZIP_HEADER)
        file.write(deflate_piece(header, zlib.Z_FULL_FLUSH))
        first_zero_piece = file.tell()
        zero_mib = bytes(MIB)
        for _ in range(ZERO_PIECES):
            file.write(zero_piece)
            zeros_crc.append(zlib.crc32(zero_mib, zeros_crc[-1]))
        file.write(deflate_piece(rest, zlib.Z_FINISH))
        crc = zlib.crc32(rest, zeros_crc[-1])
        size = len(header) + ZERO_PIECES * MIB + len(rest)
        file.write(crc.to_bytes(4, "little") + (size & 0xFFFFFFFF).to_bytes(4, "little"))

    pieces = ZERO_PIECES - CHECKED_PIECES
    return BigModel(header, data_end + after_member, first_zero_piece + pieces * len(zero_piece),
                    len(header) + pieces * MIB, zeros_crc[pieces])


def spliced_at(log: str) -> int:
    match = re.search(r"^INFO Fast path: keeping .* deflating again from tar offset (\d+)",
                      log, re.MULTILINE)
    assert match, f"the fast path was not taken:\n{log}"
    return int(match.group(1))


def read_tail(output: Path, model: Path, big: BigModel) -> bytes:
    """Check the output shares the input's bytes up to the checkpoint; return the tar after it.

    At the checkpoint the input's deflate stream needs no history, and the
    job's new deflate data refers back at most a window, so a fresh
    decompressor can start there. The gzip trailer is checked against the
    CRC-32 of the whole tar stream.
    """
    with output.open("rb") as written, model.open("rb") as original:
        assert written.read(big.checkpoint) == original.read(big.checkpoint)
        compressed = written.read()

    decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
    tail = decompressor.decompress(compressed)
    assert decompressor.eof
    trailer = decompressor.unused_data
    assert len(trailer) == 8
    assert int.from_bytes(trailer[:4], "little") == zlib.crc32(tail, big.checkpoint_crc)
    size = big.checkpoint_plain + len(tail)
    assert int.from_bytes(trailer[4:], "little") == size & 0xFFFFFFFF
    return tail


@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["gnu", "pax"])
def test_member_over_8_gib_is_kept_exactly(job, tar_format):
    big = write_big_model(job.model, tar_format)
    if tar_format == tarfile.GNU_FORMAT:
        assert big.header[124] == 0x80, "the size field is not base-256"
    else:
        assert f" size={BIG_SIZE}\n".encode() in big.header

    outcome = job.run(None, HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert outcome.leftovers() == []
    assert spliced_at(outcome.log) >= big.checkpoint_plain + WINDOW
    tail = read_tail(outcome.output, job.model, big)

    with outcome.output.open("rb") as written:
        written.seek(len(GZIP_HEADER))
        header = zlib.decompressobj(-zlib.MAX_WBITS).decompress(written.read(64 << 10),
                                                                len(big.header))
    assert header == big.header
    kept_data = bytes(CHECKED_PIECES * MIB) + big.kept_rest
    assert tail[:len(kept_data)] == kept_data
    with tarfile.open(fileobj=io.BytesIO(tail[len(kept_data):])) as added:
        (member,) = added.getmembers()
        assert member.name == archives.HYPERPARAMETERS
        assert added.extractfile(member).read() == HYPERPARAMETERS


# GNU tar's sparse formats: the old GNU header (type S) and the three pax ones.
SPARSE_FORMATS = {
    "gnu": ["--format=gnu"],
    "pax-0.0": ["--format=posix", "--sparse-version=0.0"],
    "pax-0.1": ["--format=posix", "--sparse-version=0.1"],
    "pax-1.0": ["--format=posix", "--sparse-version=1.0"],
}
SPARSE_FILE_SIZE = 64 * MIB


def require_gnu_tar() -> None:
    tar = shutil.which("tar")
    if tar is None or "GNU tar" not in subprocess.run([tar, "--version"], capture_output=True,
                                                      text=True).stdout:
        pytest.skip("GNU tar is needed to write sparse members")


@pytest.fixture(scope="module")
def sparse_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with sparse.bin (64 MiB, mostly holes, ending in data) and after.txt."""
    folder = tmp_path_factory.mktemp("sparse")
    rng = random.Random(4)
    with (folder / "sparse.bin").open("wb") as file:
        file.truncate(SPARSE_FILE_SIZE)
        for offset, size in [(0, 12288), (10 * MIB, 12288), (40 * MIB + 512, 3000),
                             (SPARSE_FILE_SIZE - 4096, 4096)]:
            file.seek(offset)
            file.write(rng.randbytes(size))
    (folder / "after.txt").write_bytes(b"after the sparse member\n")
    return folder


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


@pytest.mark.parametrize("tar_options", SPARSE_FORMATS.values(), ids=SPARSE_FORMATS.keys())
def test_sparse_member_is_kept(job, tmp_path, sparse_folder, tar_options):
    require_gnu_tar()
    subprocess.run(["tar", "--sparse", *tar_options, "-czf", str(job.model),
                    "-C", str(sparse_folder), "sparse.bin", "after.txt"], check=True)
    tar = archives.decompress(job.model.read_bytes())
    sparse_member = archives.raw_members(tar)[0][0]
    assert sparse_member.sparse, "GNU tar did not store sparse.bin as a sparse member"
    assert len(tar) < SPARSE_FILE_SIZE // 100

    outcome = job.run(None, HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert outcome.leftovers() == []
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    subprocess.run(["tar", "-xzf", str(outcome.output), "-C", str(extracted)], check=True)
    assert sha256_of(extracted / "sparse.bin") == sha256_of(sparse_folder / "sparse.bin")
    assert (extracted / "after.txt").read_bytes() == b"after the sparse member\n"
    assert (extracted / "hyperparameters.json").read_bytes() == HYPERPARAMETERS


def test_fast_path_kept_after_long_zero_run(job):
    # Zeros inflate at about 1000:1, so every slice of input the decoder feeds
    # yields more than its output limit, and it takes no snapshot in the run.
    # Past 16 MiB of held output it gives up the older snapshots too.
    tar = archives.tar_bytes([archives.file("config.json", b"{}"),
                              archives.file("zeros.bin", bytes(40 * MIB))])

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert "Fast path not possible" not in outcome.log
    # One deflate block of zeros holds about 16K matches of 258 bytes, some 4 MiB of
    # output, so the last boundary before the change can be that far back.
    assert spliced_at(outcome.log) > 40 * MIB - 2 * 4 * MIB


# --- Length fields, long and undecodable names, and links --------------------------------------
# Cases of damage, names and links that the other unit tests do not cover yet.

def gzip_members(tar: bytes) -> list[bytes]:
    """Return `tar` as two gzip members, split in the middle."""
    middle = len(tar) // 2
    return [gzip.compress(tar[:middle], mtime=0), gzip.compress(tar[middle:], mtime=0)]


def with_length(member: bytes, length: int) -> bytes:
    """Return a gzip member whose trailer declares `length` bytes (ISIZE)."""
    return member[:-4] + (length & 0xFFFFFFFF).to_bytes(4, "little")


def assert_invalid_archive(outcome, *fragments: str) -> None:
    assert outcome.exit_code == 1, outcome.log
    message = outcome.message()
    assert message.startswith("INVALID_ARCHIVE: "), message
    for fragment in fragments:
        assert fragment in message
    assert outcome.leftovers() == []
    assert not outcome.output.exists()


def test_length_mismatch_is_invalid_archive(job):
    tar = archives.tar_bytes(archives.model_members())
    first, second = gzip_members(tar)
    second_size = len(tar) - len(tar) // 2

    outcome = job.run(first + with_length(second, second_size + 1), HYPERPARAMETERS)

    assert_invalid_archive(outcome, "length mismatch", f"gzip member at byte {len(first)}",
                           f"says {second_size + 1} bytes", f"has {second_size}")


def test_crc_mismatch_in_first_member_is_invalid_archive(job):
    first, second = gzip_members(archives.tar_bytes(archives.model_members()))

    outcome = job.run(archives.crc_mismatch(first) + second, HYPERPARAMETERS)

    assert_invalid_archive(outcome, "CRC-32 mismatch", "gzip member at byte 0")


def test_gzip_of_empty_tar_stream_is_invalid_archive(job):
    outcome = job.run(gzip.compress(b"", mtime=0), HYPERPARAMETERS)

    assert_invalid_archive(outcome, "contains no members", "the tar stream is empty")


@pytest.mark.parametrize("recompress", [False, True], ids=["fast-path", "recompress"])
def test_gnu_long_names_and_link_names_are_kept(job, recompress):
    long_name = "./" + "/".join(["checkpoint-folder"] * 7) + "/pytorch_model.bin"
    members = [archives.folder("./"), archives.file(long_name, b"w" * 1000),
               archives.symlink("./" + "s" * 120, long_name[2:]),
               archives.hardlink("./" + "h" * 130, long_name)]
    tar = archives.tar_bytes(members, tarfile.GNU_FORMAT)
    # One record for the file's name, and one each for the links' names and targets.
    assert tar.count(b"././@LongLink") == 5, "tarfile wrote no GNU long name records"

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS,
                      *(["--recompress"] if recompress else []))

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)


def test_pax_name_not_utf8_is_kept(job):
    name = b"gewichte-\xe4\xf6\xfc-".decode("utf-8", "surrogateescape") + "x" * 100 + ".bin"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as archive:
        for member in [archives.file(name, b"latin-1 name"), archives.file("ok.bin", b"w")]:
            archive.addfile(member.info, io.BytesIO(member.data))
    tar = buffer.getvalue()
    assert b"hdrcharset=BINARY" in tar

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert "gewichte-\\xe4\\xf6\\xfc-" in outcome.log


def assert_unsafe(outcome, member_name: str, *fragments: str) -> None:
    assert outcome.exit_code == 1, outcome.log
    message = outcome.message()
    assert message.startswith("UNSAFE_ARCHIVE: "), message
    assert f"member {member_name} " in message
    for fragment in fragments:
        assert fragment in message
    assert not outcome.output.exists()


@pytest.mark.parametrize("member", [
    archives.symlink("blobs", "../../blobs/sha256-abc"),
    archives.symlink("config.json", "/root/.cache/huggingface/hub/config.json"),
    archives.hardlink("weights.bin", "../weights.bin"),
    archives.hardlink("passwd", "/etc/passwd"),
], ids=["symlink-up", "symlink-absolute", "hardlink-up", "hardlink-absolute"])
def test_link_outside_archive_names_dereference_hint(job, member):
    tar = archives.tar_bytes([archives.file("ok.txt", b"ok"), member])

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert_unsafe(outcome, member.info.name, f"link to {member.info.linkname}",
                  "links dereferenced", "cp -L")


@pytest.mark.parametrize("members", [
    # sub/up is the archive root; sub/up2 = sub/up/.. is the folder above it.
    [archives.folder("sub"), archives.symlink("sub/up", ".."),
     archives.symlink("sub/up2", "up/..")],
    [archives.symlink("here", "."), archives.symlink("parent", "here/..")],
], ids=["through-link-to-parent", "through-link-to-root"])
def test_link_chain_leaving_archive_is_unsafe(job, members):
    # Each link alone stays inside, but resolved through the earlier link on disk,
    # the last one points outside the extraction folder: tarfile's data filter
    # rejects it on extraction, and GNU tar creates it pointing outside.
    tar = archives.tar_bytes([archives.file("ok.txt", b"ok"), *members])

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert_unsafe(outcome, members[-1].info.name, "outside the archive")
