"""The fast path end to end: it keeps the input's compressed bytes and still writes a valid archive."""

import gzip
import random
import re
import zlib

import pytest

from app import splice
from tests import archives
from tests.archives import file, folder
from tests.unit.conftest import assert_repacked

HYPERPARAMETERS = b'{"epochs": "3"}'


def model_text(seed: int, size: int) -> bytes:
    """Compressible, varied data: deflate makes many blocks of it."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnop", k=rng.randint(2, 9))) for _ in range(4000)]
    return b" ".join(rng.choices(words, k=size // 6))[:size]


def big_members(seed: int = 1) -> list[archives.Member]:
    return [folder("./"), file("./tokenizer.json", model_text(seed, 1_500_000)),
            file("./weights.bin", random.Random(seed).randbytes(600_000)),
            file("./config.json", b'{"layers": 2}')]


def kept_prefix(log: str) -> int:
    match = re.search(r"Fast path: keeping the input's first .* deflating again from tar "
                      r"offset (\d+)", log)
    assert match, log
    return int(match.group(1))


def common_prefix(a: bytes, b: bytes) -> int:
    size = min(len(a), len(b))
    low, high = 0, size
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@pytest.mark.parametrize("level", [1, 6, 9])
def test_fast_path_keeps_compressed_prefix(job, level):
    tar = archives.tar_bytes(big_members())
    model = gzip.compress(tar, compresslevel=level, mtime=0)

    outcome = job.run(model, HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert "Fast path" in outcome.log
    # Only the tail after the last block boundary is deflated again.
    assert common_prefix(model, outcome.output.read_bytes()) > len(model) - 200_000
    assert len(tar) - kept_prefix(outcome.log) < 300_000


def test_fast_path_recompresses_after_old_hyperparameters_in_middle(job):
    members = big_members()
    members.insert(2, file("hyperparameters.json", b'{"old": 1}'))
    tar = archives.tar_bytes(members)
    model = gzip.compress(tar, mtime=0)

    outcome = job.run(model, HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert kept_prefix(outcome.log) <= archives.raw_members(tar)[2][0].offset


def test_fast_path_keeps_earlier_gzip_members_whole(job):
    tar = archives.tar_bytes(big_members())
    model = archives.gzip_bytes(tar, members=3)
    first_two = len(gzip.compress(tar[:len(tar) // 3 + 1], mtime=0))

    outcome = job.run(model, HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert outcome.output.read_bytes()[:first_two] == model[:first_two]


def test_recompress_option_matches_fast_path_content(job):
    tar = archives.tar_bytes(big_members())
    model = gzip.compress(tar, mtime=0)

    fast = gzip.decompress(job.run(model, HYPERPARAMETERS).output.read_bytes())
    slow_outcome = job.run(model, HYPERPARAMETERS, "--recompress", "--threads", "2")

    assert "Recompressing the whole archive because --recompress was given" in slow_outcome.log
    assert gzip.decompress(slow_outcome.output.read_bytes()) == fast


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def crafted_deflate(tar: bytes, cut: int, kind: str) -> bytes:
    """Deflate `tar` so that a block of type `kind` starts at tar offset `cut`.

    Z_BLOCK ends a block without padding to the byte, so the next block's first bit
    can fall on any bit of a byte. Level 0 writes only stored blocks, each ending on
    a byte boundary, so there the next block always starts at bit 0 of a byte.
    """
    strategy = zlib.Z_FIXED if kind == "fixed" else zlib.Z_DEFAULT_STRATEGY
    level = 0 if kind == "stored" else 6
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, strategy=strategy)
    body = compressor.compress(tar[:cut]) + compressor.flush(zlib.Z_BLOCK)
    return body + compressor.compress(tar[cut:]) + compressor.flush()


def block_type(deflate: bytes, bit: int) -> str:
    btype = (int.from_bytes(deflate[bit // 8:bit // 8 + 2], "little") >> (bit % 8 + 1)) & 3
    return {0: "stored", 1: "fixed", 2: "dynamic"}.get(btype, "invalid")


@pytest.mark.parametrize("kind, phases", [("dynamic", set(range(8))),
                                          ("fixed", set(range(8))), ("stored", {0})])
def test_fast_path_splices_at_every_bit_phase(job, kind, phases):
    phases_seen = set()
    for seed in range(300):
        tail = model_text(seed, 3_000 + seed)
        members = [file("./a.txt", model_text(seed, 40_000 + seed * 37)), file("./b.bin", tail)]
        tar = archives.tar_bytes(members)
        last = archives.raw_members(tar)[-1][0]
        end_of_archive = last.offset_data + -(-last.size // 512) * 512
        deflate = crafted_deflate(tar, last.offset_data, kind)
        boundary = splice.find_block_boundary(deflate, tar, end_of_archive,
                                              history_at_stream_start=True, stream_ends=True)
        assert block_type(deflate, boundary.bit) == kind
        if boundary.bit % 8 in phases_seen:
            continue
        phases_seen.add(boundary.bit % 8)
        trailer = zlib.crc32(tar).to_bytes(4, "little") + len(tar).to_bytes(4, "little")
        model = GZIP_HEADER + deflate + trailer

        outcome = job.run(model, HYPERPARAMETERS)

        assert outcome.exit_code == 0, outcome.log
        assert_repacked(tar, outcome.output, HYPERPARAMETERS)
        kept_bytes = len(GZIP_HEADER) + boundary.bit // 8
        assert outcome.output.read_bytes()[:kept_bytes] == model[:kept_bytes]
        if phases_seen == phases:
            break
    assert phases_seen == phases


def test_fast_path_falls_back_to_recompression_without_boundary(job, monkeypatch):
    monkeypatch.setattr(splice, "find_block_boundary", lambda *args, **kwargs: None)
    tar = archives.tar_bytes(big_members())
    model = gzip.compress(tar, mtime=0)

    outcome = job.run(model, HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert "WARNING Fast path not possible: no deflate block boundary found" in outcome.log
    assert "Recompressing the whole archive because no deflate block boundary" in outcome.log
    assert outcome.leftovers() == []
