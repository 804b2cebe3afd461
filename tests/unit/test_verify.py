"""Verification of the output: a stream that does not match its trailer is never published."""

import zlib

import pytest

from app import splice
from app.errors import ErrorCode, RepackError
from app.verify import Verifier
from tests import archives

DATA = b"weights " * 50_000


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def fed_verifier(stream: bytes, piece: int = 4096) -> Verifier:
    verifier = Verifier(zlib.decompressobj(-zlib.MAX_WBITS), 0, 0)
    for start in range(0, len(stream), piece):
        verifier.feed(stream[start:start + piece])
    return verifier


def test_verifier_accepts_matching_stream():
    fed_verifier(raw_deflate(DATA)).check(zlib.crc32(DATA), len(DATA), "out")


@pytest.mark.parametrize("crc_delta, length_delta", [(1, 0), (0, 1)])
def test_verifier_rejects_wrong_trailer_values(crc_delta, length_delta):
    verifier = fed_verifier(raw_deflate(DATA))
    with pytest.raises(RepackError) as error:
        verifier.check(zlib.crc32(DATA) ^ crc_delta, len(DATA) + length_delta, "out")
    assert error.value.code is ErrorCode.INTERNAL_ERROR


def test_verifier_rejects_unfinished_stream():
    verifier = fed_verifier(raw_deflate(DATA)[:-10])
    with pytest.raises(RepackError):
        verifier.check(zlib.crc32(DATA), len(DATA), "out")


def test_verifier_rejects_bytes_after_stream_end():
    verifier = fed_verifier(raw_deflate(DATA) + b"\x00")
    with pytest.raises(RepackError):
        verifier.check(zlib.crc32(DATA), len(DATA), "out")


def test_broken_splice_is_caught_and_nothing_published(job, monkeypatch):
    def wrong_closing(compressed, bit):
        return b"\x00" + b"\x00\x00\xff\xff" + b"\x02\x00"  # an extra, bogus block

    monkeypatch.setattr(splice, "close_with_empty_stored_block", wrong_closing)
    tar = archives.tar_bytes(archives.model_members())

    outcome = job.run(archives.gzip_bytes(tar))

    assert outcome.exit_code == 1
    assert outcome.message().startswith("INTERNAL_ERROR: ")
    assert "failed verification" in outcome.message()
    assert not outcome.output.exists()
    assert outcome.leftovers() == []
