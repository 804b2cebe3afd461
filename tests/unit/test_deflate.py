import errno
import gzip
import io
import os
import random
import shutil
import subprocess
import tarfile
import threading
import zlib

import pytest

from app import deflate
from app.deflate import ParallelDeflate, available_cpus, gzip_header, gzip_trailer

CHUNK_SIZE = 64 * 1024


def model_like_bytes(size, seed=0):
    """Return `size` bytes of random data mixed with compressible runs, like weight shards."""
    rng = random.Random(seed)
    parts = []
    total = 0
    while total < size:
        if rng.random() < 0.5:
            part = rng.randbytes(rng.randrange(1, 20000))
        else:
            part = bytes([rng.randrange(256)]) * rng.randrange(1, 20000)
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def deflate_in_pieces(data, piece_sizes=None, **options):
    """Deflate `data` and return (stream, crc, length).

    Each write() call takes the next size from `piece_sizes`, cycling through the list.
    Without `piece_sizes`, one write() call takes all of `data`.
    """
    piece_sizes = piece_sizes or [max(1, len(data))]
    output = io.BytesIO()
    compressor = ParallelDeflate(output.write, **options)
    position = 0
    index = 0
    while position < len(data):
        size = piece_sizes[index % len(piece_sizes)]
        compressor.write(data[position : position + size])
        position += size
        index += 1
    crc, length = compressor.finish()
    return output.getvalue(), crc, length


def inflate_raw(stream):
    """Inflate a raw deflate stream and check that it ends with a final block."""
    decompressor = zlib.decompressobj(-zlib.MAX_WBITS)
    data = decompressor.decompress(stream)
    assert decompressor.eof, "the stream has no final block"
    assert decompressor.unused_data == b""
    return data


def deflate_threads():
    return {thread for thread in threading.enumerate() if thread.name.startswith("deflate")}


@pytest.mark.parametrize(
    "data",
    [b"", b"x", model_like_bytes(CHUNK_SIZE), model_like_bytes(CHUNK_SIZE + 1)],
    ids=["empty", "one byte", "exactly one chunk", "one chunk and one byte"],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_parallel_deflate_round_trips_small_input(data, threads):
    stream, crc, length = deflate_in_pieces(data, threads=threads, chunk_size=CHUNK_SIZE)

    assert inflate_raw(stream) == data
    assert crc == zlib.crc32(data)
    assert length == len(data)


@pytest.mark.parametrize("chunk_size", [1000, CHUNK_SIZE], ids=["below window", "above window"])
def test_parallel_deflate_round_trips_odd_writes(chunk_size):
    data = model_like_bytes(20 * CHUNK_SIZE + 12345)

    stream, crc, length = deflate_in_pieces(
        data, piece_sizes=(1, 7, 4093, 65537, 300001, 3), threads=3, chunk_size=chunk_size
    )

    assert inflate_raw(stream) == data
    assert crc == zlib.crc32(data)
    assert length == len(data)


def test_parallel_deflate_accepts_bytearray_and_memoryview():
    data = model_like_bytes(3 * CHUNK_SIZE)
    output = io.BytesIO()
    compressor = ParallelDeflate(output.write, threads=2, chunk_size=CHUNK_SIZE)

    reused = bytearray(data[:CHUNK_SIZE])
    compressor.write(reused)
    reused[:] = b"\0" * len(reused)
    compressor.write(memoryview(data)[CHUNK_SIZE:])
    compressor.finish()

    assert inflate_raw(output.getvalue()) == data


def test_parallel_deflate_output_same_any_threads():
    data = model_like_bytes(10 * CHUNK_SIZE + 5)

    one_thread, _, _ = deflate_in_pieces(data, threads=1, chunk_size=CHUNK_SIZE)
    three_threads, _, _ = deflate_in_pieces(data, threads=3, chunk_size=CHUNK_SIZE)

    assert one_thread == three_threads
    assert inflate_raw(one_thread) == data


def test_parallel_deflate_ratio_close_to_single_stream():
    data = model_like_bytes(20 * CHUNK_SIZE)
    single = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    single_size = len(single.compress(data) + single.flush())

    stream, _, _ = deflate_in_pieces(data, threads=2, level=6, chunk_size=CHUNK_SIZE)

    assert len(stream) <= single_size * 1.01


def test_parallel_deflate_matches_across_chunk_boundaries():
    # Random bytes repeating every 10 KB: each chunk compresses well only when primed
    # with the end of the chunk before it.
    data = random.Random(3).randbytes(10_000) * 100

    stream, _, _ = deflate_in_pieces(data, threads=2, chunk_size=CHUNK_SIZE)

    assert inflate_raw(stream) == data
    assert len(stream) < 30_000


def test_parallel_deflate_continues_stream_after_prefix():
    head = random.Random(1).randbytes(100_000)
    # The tail starts with the random end of the head, which only a primed window compresses.
    tail = head[-30_000:] + model_like_bytes(200_000, seed=2)
    prefix_compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    prefix = prefix_compressor.compress(head) + prefix_compressor.flush(zlib.Z_SYNC_FLUSH)

    primed, crc, length = deflate_in_pieces(
        tail,
        threads=2,
        chunk_size=CHUNK_SIZE,
        zdict=head[-40_000:],
        crc=zlib.crc32(head),
        length=len(head),
    )
    unprimed, _, _ = deflate_in_pieces(tail, threads=2, chunk_size=CHUNK_SIZE)

    assert inflate_raw(prefix + primed) == head + tail
    assert len(primed) < len(unprimed) - 25_000
    assert crc == zlib.crc32(head + tail)
    assert length == len(head) + len(tail)


def test_gzip_member_reads_with_gzip_module_and_tool(tmp_path):
    data = model_like_bytes(5 * CHUNK_SIZE + 77)
    stream, crc, length = deflate_in_pieces(data, threads=2, level=9, chunk_size=CHUNK_SIZE)
    path = tmp_path / "data.gz"
    path.write_bytes(gzip_header(9) + stream + gzip_trailer(crc, length))

    assert gzip.decompress(path.read_bytes()) == data
    if shutil.which("gzip"):
        result = subprocess.run(["gzip", "-t", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_tar_stream_through_parallel_deflate_lists_with_tar(tmp_path):
    members = {"model/weights.bin": model_like_bytes(300_000), "config.json": b'{"a": 1}\n'}
    path = tmp_path / "model.tar.gz"
    with open(path, "wb") as file:
        file.write(gzip_header(6))
        compressor = ParallelDeflate(file.write, threads=2, chunk_size=CHUNK_SIZE)
        with tarfile.open(fileobj=compressor, mode="w|") as archive:
            for name, content in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
        file.write(gzip_trailer(*compressor.finish()))

    with tarfile.open(path, "r:gz") as archive:
        assert {name: archive.extractfile(name).read() for name in members} == members
    if shutil.which("tar") and shutil.which("gzip"):
        result = subprocess.run(["tar", "tzf", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == list(members)


def test_parallel_deflate_writes_output_before_finish():
    written = []
    threads = 2
    chunks = 50
    compressor = ParallelDeflate(written.append, threads=threads, chunk_size=4096)

    for _ in range(chunks):
        compressor.write(os.urandom(4096))
    compressor.write(b"!")

    # Every chunk but the last few in flight reached the output before finish().
    assert len(written) >= chunks - deflate.CHUNKS_IN_FLIGHT_PER_THREAD * threads
    compressor.finish()


@pytest.mark.parametrize("threads", [1, 2])
def test_parallel_deflate_raises_output_error_and_stops(threads):
    def write_to_full_disk(data):
        raise OSError(errno.ENOSPC, "No space left on device")

    compressor = ParallelDeflate(write_to_full_disk, threads=threads, chunk_size=4096)

    with pytest.raises(OSError) as raised:
        for _ in range(100):
            compressor.write(os.urandom(1000))
        compressor.finish()

    assert raised.value.errno == errno.ENOSPC
    assert deflate_threads() == set()
    with pytest.raises(ValueError):
        compressor.write(b"more")


def test_parallel_deflate_raises_worker_error(monkeypatch):
    def fail_to_deflate(*args):
        raise zlib.error("Error -2 while compressing data")

    monkeypatch.setattr(deflate, "_deflate_chunk", fail_to_deflate)
    compressor = ParallelDeflate(io.BytesIO().write, threads=2, chunk_size=4096)

    with pytest.raises(zlib.error):
        for _ in range(100):
            compressor.write(os.urandom(1000))
        compressor.finish()

    assert deflate_threads() == set()


def test_parallel_deflate_abort_stops_threads_and_writing():
    written = []
    compressor = ParallelDeflate(written.append, threads=3, chunk_size=4096)
    compressor.write(os.urandom(20 * 4096 + 1))
    assert deflate_threads() != set()
    written_before_abort = len(written)

    compressor.abort()
    compressor.abort()

    assert deflate_threads() == set()
    assert len(written) == written_before_abort
    with pytest.raises(ValueError):
        compressor.finish()


def test_parallel_deflate_context_manager_aborts_on_exception():
    with pytest.raises(KeyboardInterrupt):
        with ParallelDeflate(io.BytesIO().write, threads=2, chunk_size=4096) as compressor:
            compressor.write(os.urandom(10 * 4096 + 1))
            raise KeyboardInterrupt

    assert deflate_threads() == set()


@pytest.mark.parametrize(
    "options",
    [{"threads": 0}, {"chunk_size": 0}, {"level": 10}],
    ids=["no threads", "empty chunks", "level too high"],
)
def test_parallel_deflate_rejects_invalid_options(options):
    with pytest.raises(ValueError):
        ParallelDeflate(io.BytesIO().write, **options)


def test_gzip_header_sets_extra_flags_by_level():
    assert gzip_header(9) == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    assert gzip_header(1, mtime=0x01020304) == b"\x1f\x8b\x08\x00\x04\x03\x02\x01\x04\xff"
    assert gzip_header(6)[8] == 0


def test_gzip_trailer_reduces_length_modulo_4_gib():
    assert gzip_trailer(0xDEADBEEF, 2**32 + 5) == b"\xef\xbe\xad\xde\x05\x00\x00\x00"


def test_available_cpus_within_affinity_mask():
    cpus = available_cpus()

    assert cpus >= 1
    if hasattr(os, "sched_getaffinity"):
        assert cpus <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1)],
)
def test_cgroup_cpu_quota_reads_cgroup_v2(tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max)

    assert deflate._cgroup_cpu_quota(tmp_path) == expected


@pytest.mark.parametrize(("quota", "expected"), [("-1\n", None), ("250000\n", 3)])
def test_cgroup_cpu_quota_reads_cgroup_v1(tmp_path, quota, expected):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")

    assert deflate._cgroup_cpu_quota(tmp_path) == expected


def test_cgroup_cpu_quota_none_without_cgroup_files(tmp_path):
    assert deflate._cgroup_cpu_quota(tmp_path) is None
