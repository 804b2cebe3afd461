"""Seed inputs, mutations and the property that every run of the job must satisfy.

Shared by the short fuzz test in CI (tests/unit/test_fuzz.py) and the long
campaign (tests/fuzz/campaign.py). The property, for any model file and
hyperparameters file:

* exit 0: the output folder contains model.tar.gz and nothing else. The output
  passes the gzip module's CRC and length checks, and tarfile lists it with
  only zero bytes after the end-of-archive marker. Exactly one member is the
  root hyperparameters.json, with the given bytes. A reference reader (the gzip,
  bz2 and lzma modules plus tarfile) must accept the input, and every other
  member must be byte-identical to the input's member in the same place.
* exit 1: exactly one `ERROR <CODE>: ` log line with a code the user can act
  on, the failure message starts with the same code, and the output folder is
  empty.
* anything else (another exit code, INTERNAL_ERROR, an exception escaping
  main, a run over the time limit, a non-daemon thread still running after main
  returns) is a failure. A non-daemon thread keeps the job's process from
  exiting; a daemon thread left behind is harmless to the job, so only the
  campaign reports it.
"""
# Seconds to wait for a thread started by the job to end after main returns.
THREAD_GRACE = 2.0

import contextlib
import dataclasses
import gzip
import io
import lzma
import bz2
import os
import random
import re
import struct
import tarfile
import threading
import time
import zlib
from pathlib import Path

from app import main
from tests import archives
from tests.archives import file, folder, hardlink, symlink

EXPECTED_CODES = frozenset({
    "MODEL_NOT_FOUND", "HYPERPARAMETERS_NOT_FOUND", "INVALID_FORMAT", "INVALID_ARCHIVE",
    "UNSAFE_ARCHIVE", "INVALID_HYPERPARAMETERS", "OUTPUT_FAILED",
})
ERROR_LINE = re.compile(r"^ERROR ([A-Z_]+): ", re.MULTILINE)
COMPRESSIONS = ("gzip", "gzip-multi", "gzip-flags", "gzip-padded", "bz2", "xz", "plain")
# The new member's mtime comes from the hyperparameters file; fixed so runs repeat exactly.
MTIME = 1_700_000_000


@dataclasses.dataclass(frozen=True)
class Seed:
    """A valid input: its tar stream and how to compress it."""

    name: str
    tar: bytes
    compression: str
    model: bytes


def seed_members() -> dict[str, list[archives.Member]]:
    """Small member lists, each exercising one part of the tar format."""
    long_name = "./" + "/".join(["deep-folder"] * 10) + "/weights.bin"
    pax = file("./café-é.txt", b"caf\xc3\xa9")
    pax.info.pax_headers = {"comment": "fuzz seed", "SCHILY.xattr.user.tag": "v1"}
    return {
        "flat": [file("config.json", b'{"hidden_size": 8}\n')],
        "folders": [folder("./"), folder("./code"), file("./code/inference.py", b"print(1)\n"),
                    file("./model.bin", bytes(range(256)) * 3)],
        "long-names": [folder("./"), file(long_name, b"w" * 700),
                       symlink("./" + "l" * 120, long_name[2:])],
        "links": [file("./a.bin", b"abc" * 100), symlink("./s", "a.bin"),
                  hardlink("./h", "./a.bin"), file("./run.sh", b"#!/bin/sh\n", mode=0o755)],
        "existing-hyperparameters": [file("./hyperparameters.json", b'{"old": 1}'),
                                     file("./config.json", b"{}"),
                                     file("./code/hyperparameters.json", b'{"nested": 1}')],
        "hyperparameters-middle-and-last": [file("./a.txt", b"a" * 600),
                                            file("hyperparameters.json", b"{}"),
                                            file("./b.txt", b"b" * 40),
                                            file("./hyperparameters.json", b'{"x": 2}')],
        "pax": [pax, file("./b.txt", b"")],
        "empty-file": [file("./empty", b"")],
    }


def build_seeds() -> list[Seed]:
    """Every member list in both GNU and pax format, under every compression."""
    seeds = []
    for name, members in seed_members().items():
        for tar_format, format_name in ((tarfile.GNU_FORMAT, "gnu"), (tarfile.PAX_FORMAT, "pax")):
            tar = archives.tar_bytes(members, tar_format)
            for compression in COMPRESSIONS:
                seeds.append(Seed(f"{name}-{format_name}-{compression}", tar, compression,
                                  compress(tar, compression)))
    return seeds


HYPERPARAMETER_SEEDS = (
    b'{"epochs": "3"}',
    b'{"epochs": "3", "learning_rate": "0.001", "batch_size": "32"}\n',
    b'{"nested": {"list": [1, 2.5, null, true], "text": "caf\xc3\xa9"}}',
    b"{}",
)


def compress(tar: bytes, kind: str) -> bytes:
    """Compress `tar` like tests.archives.compress, plus gzip forms it does not make.

    bzip2 and xz use their fastest levels, because the default xz preset took
    about 2 ms per call here, as long as a run of the job on these inputs.
    """
    if kind == "gzip-flags":
        return gzip_with_all_flags(tar)
    if kind == "gzip-padded":
        return archives.gzip_bytes(tar) + bytes(17)
    if kind == "bz2":
        return bz2.compress(tar, compresslevel=1)
    if kind == "xz":
        return lzma.compress(tar, preset=0)
    return archives.compress(tar, kind)


def gzip_with_all_flags(data: bytes) -> bytes:
    """Return one gzip member whose header has FEXTRA, FNAME, FCOMMENT and FHCRC set."""
    header = b"\x1f\x8b\x08" + bytes([4 | 8 | 16 | 2]) + struct.pack("<I", 0) + b"\x00\x03"
    header += struct.pack("<H", 6) + b"AB\x02\x00xy"
    header += b"model.tar\x00" + b"fuzz seed\x00"
    header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return header + body + trailer


# --- Mutations ---------------------------------------------------------------
# Each takes the bytes and a random.Random and returns new bytes. The campaign
# uses them; the Hypothesis strategies in tests/unit/test_fuzz.py draw their own
# mutations so that Hypothesis can shrink them.

# (offset, length) of the ustar header fields: name, mode, uid, gid, size, mtime,
# checksum, type flag, link name, magic, version, prefix, and GNU's sparse area.
TAR_HEADER_FIELDS = ((0, 100), (100, 8), (108, 8), (116, 8), (124, 12), (136, 12), (148, 8),
                     (156, 1), (157, 100), (257, 6), (263, 2), (345, 155), (483, 12))
INTERESTING_BYTES = (0x00, 0x01, 0x20, 0x30, 0x37, 0x7F, 0x80, 0xFF, ord("/"), ord("."))


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    position = rng.randrange(len(data))
    return replace_bytes(data, position, bytes([data[position] ^ (1 << rng.randrange(8))]))


def overwrite_bytes(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    position = rng.randrange(len(data))
    size = rng.choice((1, 1, 2, 4, 8))
    patch = bytes(rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)
                  for _ in range(size))
    return replace_bytes(data, position, patch)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    position = rng.randrange(len(data) + 1)
    size = rng.choice((1, 2, 8, 512))
    filler = bytes(size) if rng.random() < 0.5 else rng.randbytes(size)
    return data[:position] + filler + data[position:]


def delete_bytes(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return data
    position = rng.randrange(len(data))
    return data[:position] + data[position + rng.choice((1, 2, 8, 512)):]


def mutate_tar_header(tar: bytes, rng: random.Random) -> bytes:
    """Damage one field of one 512-byte header block: size, checksum, type, name, magic..."""
    blocks = len(tar) // tarfile.BLOCKSIZE
    if not blocks:
        return tar
    # Headers sit at the start of the stream more often than not; pick among the
    # first few blocks with a bias, any block otherwise.
    block = rng.randrange(min(blocks, 8)) if rng.random() < 0.7 else rng.randrange(blocks)
    start = block * tarfile.BLOCKSIZE
    offset, length = rng.choice(TAR_HEADER_FIELDS)
    choice = rng.random()
    if choice < 0.3:
        patch = rng.randbytes(length)
    elif choice < 0.5:
        patch = bytes(length)
    elif choice < 0.7:
        patch = f"{rng.choice((0, 1, 511, 512, 513, 1 << 33, 8 ** (length - 1) - 1)):o}".encode()
        patch = patch.rjust(length - 1, b"0")[-length:] + b"\x00"
        patch = patch[:length]
    elif choice < 0.85:
        patch = bytes([rng.choice(b"0123456789LKxgSDV\x00")])
    else:
        patch = bytes([rng.choice(INTERESTING_BYTES)]) * length
    mutated = replace_bytes(tar, start + offset, patch[:length])
    if rng.random() < 0.6:
        mutated = fix_checksum(mutated, start)
    return mutated


def mutate_gzip_frame(data: bytes, rng: random.Random) -> bytes:
    """Damage a gzip header field or the trailer (CRC-32, length), or add bytes after it."""
    if len(data) < 18 or data[:2] != b"\x1f\x8b":
        return flip_bit(data, rng)
    choice = rng.random()
    if choice < 0.4:
        position = rng.randrange(10)
        return replace_bytes(data, position, bytes([rng.randrange(256)]))
    if choice < 0.7:
        position = len(data) - 1 - rng.randrange(8)
        return replace_bytes(data, position, bytes([data[position] ^ (1 << rng.randrange(8))]))
    if choice < 0.8:
        return data[:-rng.randrange(1, 9)]
    if choice < 0.9:
        return data + rng.choice((bytes(rng.randrange(1, 600)), b"\x1f\x8b", b"junk",
                                  rng.randbytes(rng.randrange(1, 30))))
    return data + archives.gzip_bytes(rng.randbytes(rng.randrange(0, 600)))


def replace_bytes(data: bytes, position: int, patch: bytes) -> bytes:
    return data[:position] + patch + data[position + len(patch):]


def fix_checksum(tar: bytes, start: int) -> bytes:
    """Recompute a header block's checksum, so the damage reaches the fields behind it."""
    block = bytearray(tar[start:start + tarfile.BLOCKSIZE])
    if len(block) < tarfile.BLOCKSIZE:
        return tar
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % (sum(block) & 0o777777)
    return tar[:start] + bytes(block) + tar[start + tarfile.BLOCKSIZE:]


BYTE_MUTATIONS = (flip_bit, overwrite_bytes, truncate, insert_bytes, delete_bytes,
                  mutate_gzip_frame)


def splice(first: bytes, second: bytes, rng: random.Random) -> bytes:
    """Join a prefix of one input to a suffix of another."""
    return first[:rng.randrange(len(first) + 1)] + second[rng.randrange(len(second) + 1):]


def mutate_model(seeds: list[Seed], rng: random.Random) -> bytes:
    """Return a model file made from a random seed and up to four random mutations."""
    seed = rng.choice(seeds)
    tar = seed.tar
    if rng.random() < 0.4:
        for _ in range(rng.randint(1, 2)):
            tar = mutate_tar_header(tar, rng) if rng.random() < 0.8 else flip_bit(tar, rng)
    data = seed.model if tar is seed.tar else compress(tar, seed.compression)
    if tar is seed.tar or rng.random() < 0.3:
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.08:
                data = splice(data, rng.choice(seeds).model, rng)
            else:
                data = rng.choice(BYTE_MUTATIONS)(data, rng)
    return data


def mutate_hyperparameters(rng: random.Random) -> bytes:
    """Return a valid hyperparameters file most of the time, a damaged one otherwise."""
    data = rng.choice(HYPERPARAMETER_SEEDS)
    if rng.random() < 0.9:
        return data
    for _ in range(rng.randint(1, 2)):
        data = rng.choice((flip_bit, overwrite_bytes, truncate, insert_bytes,
                           delete_bytes))(data, rng)
    return data


# --- Running the job and checking the property -------------------------------

class PropertyViolation(AssertionError):
    """A run of the job that broke the property; the message describes the violation."""


@dataclasses.dataclass
class Run:
    """One run of the job: its exit code, log and how long it took."""

    exit_code: int | None
    log: str
    seconds: float
    error: BaseException | None = None
    # Threads the run started that were still running after it: non-daemon ones
    # THREAD_GRACE seconds after, daemon ones at once (they may still be ending).
    leftover_threads: list[threading.Thread] = dataclasses.field(default_factory=list)


class Workspace:
    """Input and output paths in one folder, reused from run to run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.model = root / "in" / "model.tar.gz"
        self.hyperparameters = root / "in" / "hyperparameters.json"
        self.output_dir = root / "out"
        self.failure_message = root / "message"
        self.model.parent.mkdir(parents=True, exist_ok=True)
        self.argv = ("--model", str(self.model), "--hyperparameters", str(self.hyperparameters),
                     "--output-dir", str(self.output_dir),
                     "--failure-message", str(self.failure_message), "--threads", "1")

    def run(self, model: bytes, hyperparameters: bytes, recompress: bool = False) -> Run:
        """Write the inputs, clear the previous run's output, run the job in-process.

        `recompress` passes --recompress, which skips the gzip fast path.
        """
        self.model.write_bytes(model)
        self.hyperparameters.write_bytes(hyperparameters)
        os.utime(self.hyperparameters, (MTIME, MTIME))
        if self.output_dir.exists():
            for leftover in self.output_dir.iterdir():
                leftover.unlink()
        self.failure_message.unlink(missing_ok=True)

        # main() points its log handler at sys.stderr as it is when main starts.
        log = io.StringIO()
        threads_before = set(threading.enumerate())
        started = time.perf_counter()
        try:
            with contextlib.redirect_stderr(log):
                exit_code = main(self.argv + (("--recompress",) if recompress else ()))
        except BaseException as exc:  # everything must be caught inside main
            return Run(None, log.getvalue(), time.perf_counter() - started, exc)
        run = Run(exit_code, log.getvalue(), time.perf_counter() - started)
        run.leftover_threads = _leftover_threads(threads_before)
        return run


def _leftover_threads(threads_before: set[threading.Thread]) -> list[threading.Thread]:
    new = [thread for thread in threading.enumerate() if thread not in threads_before]
    deadline = time.monotonic() + THREAD_GRACE
    for thread in new:
        if not thread.daemon:
            thread.join(max(deadline - time.monotonic(), 0))
    return [thread for thread in new if thread.is_alive()]


def check(workspace: Workspace, model: bytes, hyperparameters: bytes, run: Run,
          time_limit: float) -> None:
    """Raise PropertyViolation when `run` breaks the property (see the module docstring)."""
    if run.error is not None:
        raise PropertyViolation(f"main raised {type(run.error).__name__}: {run.error}")
    if run.seconds > time_limit:
        raise PropertyViolation(f"the run took {run.seconds:.1f} s, over {time_limit} s")
    blocking = [thread.name for thread in run.leftover_threads if not thread.daemon]
    if blocking:
        raise PropertyViolation(f"non-daemon threads still running after main returned: "
                                f"{blocking}")
    codes = ERROR_LINE.findall(run.log)
    if run.exit_code == 0:
        if codes:
            raise PropertyViolation(f"exit 0 with ERROR lines {codes}")
        _check_output(workspace, model, hyperparameters)
    elif run.exit_code == 1:
        _check_failure(workspace, codes)
    else:
        raise PropertyViolation(f"exit code {run.exit_code}, expected 0 or 1")


def _check_failure(workspace: Workspace, codes: list[str]) -> None:
    if len(codes) != 1:
        raise PropertyViolation(f"exit 1 with {len(codes)} ERROR lines: {codes}")
    code = codes[0]
    if code not in EXPECTED_CODES:
        raise PropertyViolation(f"exit 1 with code {code}")
    message = workspace.failure_message.read_text(encoding="utf-8")
    if not message.startswith(f"{code}: "):
        raise PropertyViolation(f"the failure message does not start with {code}: {message!r}")
    leftovers = _listing(workspace.output_dir)
    if leftovers:
        raise PropertyViolation(f"exit 1 left files in the output folder: {leftovers}")


def _check_output(workspace: Workspace, model: bytes, hyperparameters: bytes) -> None:
    listing = _listing(workspace.output_dir)
    if listing != ["model.tar.gz"]:
        raise PropertyViolation(f"exit 0 but the output folder holds {listing}")
    try:
        output_tar = gzip.decompress((workspace.output_dir / "model.tar.gz").read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise PropertyViolation(f"the output fails the gzip check: {exc}") from exc
    written = _strict_members(output_tar, "output")

    roots = [(info, raw) for info, raw in written if archives.is_root_hyperparameters(info)]
    if len(roots) != 1:
        raise PropertyViolation(f"the output has {len(roots)} root hyperparameters.json members")
    info, raw = roots[0]
    stored = raw[len(raw) - _data_blocks(info):][:info.size] if info.size else b""
    if not info.isreg() or stored != hyperparameters:
        raise PropertyViolation("the output's hyperparameters.json differs from the input file")

    input_tar = reference_tar(model)
    if input_tar is None:
        raise PropertyViolation("exit 0 for a model file the reference reader rejects")
    expected = [(i, r) for i, r in _strict_members(input_tar, "input")
                if not archives.is_root_hyperparameters(i)]
    others = [(i, r) for i, r in written if not archives.is_root_hyperparameters(i)]
    if len(others) != len(expected):
        raise PropertyViolation(f"the output keeps {len(others)} of the input's "
                                f"{len(expected)} members")
    for (want, want_raw), (got, got_raw) in zip(expected, others):
        # The job keeps the global pax headers in front of a dropped member. In the
        # output they follow the member before, so they count with that member.
        moved = got_raw[len(want_raw):]
        if not got_raw.startswith(want_raw) or not _only_global_headers(moved):
            raise PropertyViolation(f"member {want.name!r} changed: {got.name!r} in the output")


def _only_global_headers(blocks: bytes) -> bool:
    """Tell whether `blocks` is a run of global pax headers ('g') with their data, or empty."""
    while blocks:
        if blocks[156:157] != tarfile.XGLTYPE:
            return False
        info = tarfile.TarInfo.frombuf(blocks[:512], tarfile.ENCODING, "surrogateescape")
        blocks = blocks[512 + -(-info.size // 512) * 512:]
    return True


def reference_tar(model: bytes) -> bytes | None:
    """Return the tar stream as the standard library reads it, or None if it cannot.

    gzip.GzipFile reads multi-member files, skips zero padding after the last
    member and checks every CRC-32 and length, like the job should.
    """
    try:
        if model.startswith(b"\x1f\x8b"):
            with gzip.GzipFile(fileobj=io.BytesIO(model)) as stream:
                tar = stream.read()
        elif model.startswith(b"BZh"):
            tar = _decompress_streams(model, b"BZh", bz2.BZ2Decompressor)
        elif model.startswith(b"\xfd7zXZ\x00"):
            tar = _decompress_streams(model, b"\xfd7zXZ\x00",
                                      lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ))
        else:
            tar = model
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError):
        return None
    try:
        _strict_members(tar, "input")
    except PropertyViolation:
        return None
    return tar


def _decompress_streams(data: bytes, magic: bytes, new_decompressor) -> bytes:
    """Decompress concatenated bzip2 or xz streams, with zero bytes allowed after the last.

    bz2.decompress and lzma.decompress ignore any data after a complete stream
    that fails to decode, which the job must reject, so this loop replaces them.
    """
    parts = []
    while data.startswith(magic):
        decompressor = new_decompressor()
        parts.append(decompressor.decompress(data))
        if not decompressor.eof:
            raise EOFError("a stream ends before its end-of-stream marker")
        data = decompressor.unused_data
    if any(data):
        raise ValueError("data other than zero bytes after the last stream")
    return b"".join(parts)


def _strict_members(tar: bytes, role: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    """List members with their raw bytes; raise unless only zeros follow the last member.

    tarfile stops listing at a damaged header without raising, so the zeros
    check is what catches damage in the middle of an archive.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            infos = archive.getmembers()
            end = archive.offset
    except (tarfile.TarError, EOFError, ValueError) as exc:
        raise PropertyViolation(f"tarfile cannot read the {role}: {exc}") from exc
    if any(tar[end:]):
        raise PropertyViolation(f"the {role} has non-zero bytes after its last member, "
                                f"at tar offset {end}")
    # Each member runs to the next one's header, and the last one to where tarfile
    # stopped. That end counts a GNU sparse member's stored data, not its logical size.
    ends = [info.offset for info in infos[1:]] + [end]
    return [(info, tar[info.offset:member_end]) for info, member_end in zip(infos, ends)]


def _data_blocks(info: tarfile.TarInfo) -> int:
    return -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE


def _listing(folder_path: Path) -> list[str]:
    if not folder_path.exists():
        return []
    return sorted(path.name for path in folder_path.iterdir())
