"""Tests for finding deflate block boundaries and splicing a new deflate stream after one.

The streams are built with zlib, and a small pure-Python inflater lists their true
block boundaries, so every test has the expected boundary before it calls the search.
"""

from __future__ import annotations

import random
import zlib

import pytest

from app.splice import (
    WINDOW_SIZE,
    BlockBoundary,
    close_with_empty_stored_block,
    find_block_boundary,
)

# ---- a reference inflater that records where each block starts ----

_LENGTH_BASES = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59,
                 67, 83, 99, 115, 131, 163, 195, 227, 258]
_LENGTH_EXTRA = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
_DISTANCE_BASES = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769,
                   1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
_DISTANCE_EXTRA = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11,
                   12, 12, 13, 13]
_CODE_LENGTH_ORDER = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]


class _BitReader:
    def __init__(self, data: bytes) -> None:
        self.data = data + bytes(4)
        self.position = 0

    def read(self, width: int) -> int:
        byte, shift = divmod(self.position, 8)
        bits = (int.from_bytes(self.data[byte : byte + 4], "little") >> shift) & ((1 << width) - 1)
        self.position += width
        return bits


def _huffman_decoder(lengths: list[int]) -> dict[tuple[int, int], int]:
    """Map (code length, code) to symbol for a canonical Huffman code."""
    table = {}
    code = 0
    for length in range(1, 16):
        for symbol, symbol_length in enumerate(lengths):
            if symbol_length == length:
                table[(length, code)] = symbol
                code += 1
        code <<= 1
    return table


def _decode_symbol(reader: _BitReader, table: dict[tuple[int, int], int]) -> int:
    code = 0
    for length in range(1, 16):
        code = (code << 1) | reader.read(1)
        symbol = table.get((length, code))
        if symbol is not None:
            return symbol
    raise ValueError("invalid Huffman code")


def _read_dynamic_tables(reader: _BitReader):
    literal_count = reader.read(5) + 257
    distance_count = reader.read(5) + 1
    code_length_count = reader.read(4) + 4
    code_length_lengths = [0] * 19
    for symbol in _CODE_LENGTH_ORDER[:code_length_count]:
        code_length_lengths[symbol] = reader.read(3)
    code_length_table = _huffman_decoder(code_length_lengths)
    lengths: list[int] = []
    while len(lengths) < literal_count + distance_count:
        symbol = _decode_symbol(reader, code_length_table)
        if symbol < 16:
            lengths.append(symbol)
        elif symbol == 16:
            lengths.extend([lengths[-1]] * (3 + reader.read(2)))
        elif symbol == 17:
            lengths.extend([0] * (3 + reader.read(3)))
        else:
            lengths.extend([0] * (11 + reader.read(7)))
    return _huffman_decoder(lengths[:literal_count]), _huffman_decoder(lengths[literal_count:])


_FIXED_TABLES = (
    _huffman_decoder([8] * 144 + [9] * 112 + [7] * 24 + [8] * 8),
    _huffman_decoder([5] * 30),
)


def _list_blocks(stream: bytes, window: bytes = b"") -> tuple[bytes, list[BlockBoundary]]:
    """Inflate a raw deflate stream and return its output and the start of every block."""
    reader = _BitReader(stream)
    output = bytearray(window)
    blocks = []
    final = False
    while not final:
        blocks.append(BlockBoundary(reader.position, len(output) - len(window)))
        final = bool(reader.read(1))
        block_type = reader.read(2)
        if block_type == 0:
            reader.position = (reader.position + 7) // 8 * 8
            length = reader.read(16)
            reader.read(16)
            start = reader.position // 8
            output += stream[start : start + length]
            reader.position += 8 * length
            continue
        literals, distances = _FIXED_TABLES if block_type == 1 else _read_dynamic_tables(reader)
        while True:
            symbol = _decode_symbol(reader, literals)
            if symbol < 256:
                output.append(symbol)
                continue
            if symbol == 256:
                break
            length = _LENGTH_BASES[symbol - 257] + reader.read(_LENGTH_EXTRA[symbol - 257])
            code = _decode_symbol(reader, distances)
            distance = _DISTANCE_BASES[code] + reader.read(_DISTANCE_EXTRA[code])
            for _ in range(length):
                output.append(output[-distance])
    return bytes(output[len(window) :]), blocks


# ---- data and stream builders ----


def _text(size: int, seed: int) -> bytes:
    """Return repetitive English-like text, so that matches reach far back."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"etaoinshrdlucmfw") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    parts = []
    total = 0
    while total < size:
        word = rng.choice(words)
        parts.append(word)
        total += len(word) + 1
    return b" ".join(parts)[:size]


def _weights(size: int, seed: int) -> bytes:
    """Return fp16-like bytes: a random low byte and a narrow spread of high bytes."""
    rng = random.Random(seed)
    pairs = bytearray()
    for _ in range(size // 2):
        pairs.append(rng.getrandbits(8))
        pairs.append(rng.choice((0x2C, 0x2D, 0x2E, 0x2F, 0xAC, 0xAD, 0xAE, 0xAF)))
    return bytes(pairs)


def _compress_in_blocks(data: bytes, cuts: list[int], *, level: int = 6, strategy: int = zlib.Z_DEFAULT_STRATEGY,
                        flush: int = zlib.Z_BLOCK) -> bytes:
    """Compress data as one raw deflate stream, ending a block (with `flush`) at each cut."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15, 9, strategy)
    pieces = []
    start = 0
    for cut in cuts:
        pieces.append(compressor.compress(data[start:cut]))
        pieces.append(compressor.flush(flush))
        start = cut
    pieces.append(compressor.compress(data[start:]))
    pieces.append(compressor.flush())
    return b"".join(pieces)


def _expected_boundary(blocks: list[BlockBoundary], limit: int, first_bit: int = 0) -> BlockBoundary | None:
    eligible = [block for block in blocks if block.plain <= limit and block.bit >= first_bit]
    return max(eligible, key=lambda block: block.bit, default=None)


def _splice(stream: bytes, data: bytes, boundary: BlockBoundary, new_tail: bytes) -> bytes:
    """Keep the stream's bits before the boundary and deflate new_tail after them."""
    window = data[max(0, boundary.plain - WINDOW_SIZE) : boundary.plain]
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, zdict=window) if window else zlib.compressobj(9, zlib.DEFLATED, -15)
    return (
        stream[: boundary.bit // 8]
        + close_with_empty_stored_block(stream, boundary.bit)
        + compressor.compress(new_tail)
        + compressor.flush()
    )


def _assert_same_splice(stream: bytes, found: BlockBoundary | None, expected: BlockBoundary) -> None:
    """Assert that found splices like expected.

    A stored block's header is followed by zero padding, and the search reports the
    highest position that reads as the same header, so only the kept bytes must agree.
    """
    assert found is not None
    assert found.plain == expected.plain
    kept_found = stream[: found.bit // 8] + close_with_empty_stored_block(stream, found.bit)
    kept_expected = stream[: expected.bit // 8] + close_with_empty_stored_block(stream, expected.bit)
    assert kept_found == kept_expected


def _assert_splice_round_trips(stream: bytes, data: bytes, boundary: BlockBoundary) -> None:
    new_tail = data[boundary.plain :] + b'{"epochs": 3}\n' + data[: boundary.plain][-5000:]
    decompressor = zlib.decompressobj(-15)
    output = decompressor.decompress(_splice(stream, data, boundary, new_tail))
    assert decompressor.eof
    assert decompressor.unused_data == b""
    assert output == data[: boundary.plain] + new_tail


# ---- close_with_empty_stored_block ----


@pytest.mark.parametrize("phase", range(8))
def test_close_with_empty_stored_block_keeps_low_bits(phase):
    closing = close_with_empty_stored_block(b"\xff\xff", 8 + phase)

    assert closing[0] == (1 << phase) - 1
    assert closing[-4:] == b"\x00\x00\xff\xff"
    assert len(closing) == 4 + (2 if phase > 5 else 1)


# ---- find_block_boundary on crafted streams ----


@pytest.mark.parametrize("strategy_name", ["dynamic", "fixed"])
def test_boundary_at_all_eight_bit_phases(strategy_name):
    strategy = zlib.Z_FIXED if strategy_name == "fixed" else zlib.Z_DEFAULT_STRATEGY
    data = _text(120_000, seed=1)
    # A fixed Huffman block is found by walking from the block before it, and that
    # block must start at least 32 KiB into the stream to have a full window.
    cuts = list(range(40_000, 118_000, 1_700))
    stream = _compress_in_blocks(data, [34_000] + cuts, strategy=strategy)
    output, blocks = _list_blocks(stream)
    assert output == data

    phases_seen = set()
    for cut in cuts:
        block = next(block for block in blocks if block.plain == cut)
        limit = cut + 300
        expected = _expected_boundary(blocks, limit)
        assert expected == block

        found = find_block_boundary(stream, data, limit, stream_ends=True)

        assert found == expected
        _assert_splice_round_trips(stream, data, found)
        phases_seen.add(found.bit % 8)
    assert phases_seen == set(range(8))


def test_boundary_of_stored_blocks():
    data = _weights(200_000, seed=2)
    stream = _compress_in_blocks(data, [70_000, 130_000], level=0)
    output, blocks = _list_blocks(stream)
    assert output == data
    limit = 150_000
    expected = _expected_boundary(blocks, limit)
    assert expected.plain > 130_000 - 65_536

    found = find_block_boundary(stream, data, limit, stream_ends=True)

    _assert_same_splice(stream, found, expected)
    _assert_splice_round_trips(stream, data, found)


def test_boundary_at_sync_flush():
    data = _weights(160_000, seed=3)
    stream = _compress_in_blocks(data, [100_000], flush=zlib.Z_SYNC_FLUSH)
    _, blocks = _list_blocks(stream)
    stored = [block for block in blocks if block.plain == 100_000]
    assert len(stored) == 2  # the flushed block's end and the empty stored block

    found = find_block_boundary(stream, data, 100_000, stream_ends=True)

    _assert_same_splice(stream, found, max(stored, key=lambda block: block.bit))
    _assert_splice_round_trips(stream, data, found)


def test_boundary_of_dynamic_blocks_in_weights():
    data = _weights(300_000, seed=4)
    stream = _compress_in_blocks(data, [], level=9)
    _, blocks = _list_blocks(stream)
    assert len(blocks) > 3
    limit = 250_000

    found = find_block_boundary(stream, data, limit, stream_ends=True)

    assert found == _expected_boundary(blocks, limit)
    _assert_splice_round_trips(stream, data, found)


def test_boundary_near_stream_start():
    data = _text(60_000, seed=5)
    stream = _compress_in_blocks(data, [10_000, 20_000])
    _, blocks = _list_blocks(stream)
    limit = 15_000
    expected = _expected_boundary(blocks, limit)
    assert expected.plain == 10_000

    found = find_block_boundary(stream, data, limit, history_at_stream_start=True, stream_ends=True)

    assert found == expected
    _assert_splice_round_trips(stream, data, found)


def test_boundary_needs_full_window():
    data = _text(60_000, seed=5)
    stream = _compress_in_blocks(data, [10_000, 20_000])

    found = find_block_boundary(stream, data, 15_000, stream_ends=True)

    assert found is None


def test_boundary_at_first_block():
    data = _text(30_000, seed=6)
    stream = _compress_in_blocks(data, [], strategy=zlib.Z_FIXED)

    found = find_block_boundary(stream, data, 100, history_at_stream_start=True, stream_ends=True)

    assert found == BlockBoundary(0, 0)


def test_boundary_in_mid_stream_slice():
    data = _text(200_000, seed=7)
    stream = _compress_in_blocks(data, [60_000, 90_000, 120_000, 150_000])
    _, blocks = _list_blocks(stream)
    start_byte = next(block for block in blocks if block.plain == 60_000).bit // 8 + 100
    stop_byte = next(block for block in blocks if block.plain == 150_000).bit // 8 + 500
    piece = stream[start_byte:stop_byte]
    decompressor = zlib.decompressobj(-15)
    history = decompressor.decompress(stream[:stop_byte])
    limit = 125_000
    expected = _expected_boundary(blocks, limit)
    assert expected.plain == 120_000

    found = find_block_boundary(piece, history, limit, stream_ends=False)

    assert found == BlockBoundary(expected.bit - 8 * start_byte, expected.plain)
    _assert_splice_round_trips(stream, data, expected)


def test_boundary_none_before_first_block():
    data = _text(200_000, seed=8)
    stream = _compress_in_blocks(data, [120_000])
    _, blocks = _list_blocks(stream)
    start_byte = next(block for block in blocks if block.plain == 120_000).bit // 8 - 200
    piece = stream[start_byte:]

    found = find_block_boundary(piece, data, 119_000, stream_ends=True)

    assert found is None


def _decodes_tail_from(stream: bytes, byte: int, data: bytes) -> bool:
    """Tell whether raw-inflating from a byte reproduces the end of data and ends with the stream."""
    probe = zlib.decompressobj(-15, zdict=bytes(WINDOW_SIZE))
    try:
        length = len(probe.decompress(stream[byte:]))
    except zlib.error:
        return False
    plain = len(data) - length
    if plain < WINDOW_SIZE:
        return False
    decompressor = zlib.decompressobj(-15, zdict=data[plain - WINDOW_SIZE : plain])
    output = decompressor.decompress(stream[byte:])
    return output == data[plain:] and decompressor.eof and not decompressor.unused_data


def test_boundary_rejects_resynced_fixed_position():
    data = _text(120_000, seed=9)
    stream = _compress_in_blocks(data, [80_000], strategy=zlib.Z_FIXED)
    _, blocks = _list_blocks(stream)
    last_block = blocks[-1]
    assert last_block.plain == 80_000
    # Inside a fixed Huffman block, 3 bits that read as a fixed block header,
    # followed by a symbol boundary, decode the rest of the block exactly as the
    # real decoder does, although no block starts there.
    false_bytes = [
        byte
        for byte in range(last_block.bit // 8 + 64, last_block.bit // 8 + 2_000)
        if _decodes_tail_from(stream, byte, data)
    ]
    assert len(false_bytes) >= 3

    for byte in false_bytes[:3]:
        found = find_block_boundary(stream[byte:], data, len(data), stream_ends=True)

        assert found is None
