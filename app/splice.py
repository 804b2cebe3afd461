"""Find a deflate block boundary so a rewrite can keep the compressed bytes before it.

zlib does not report where deflate blocks start, so this module guesses bit positions
and proves them. A cheap filter over every bit position of a region rejects most
guesses: block type, HLIT and HDIST ranges, a complete code-length code, stored-block
LEN/NLEN. zlib then raw-inflates from each remaining position, and the position counts
as a block boundary only if the output equals the known uncompressed data up to the
end and the stream ends where the real one does.

zlib reads input in whole bytes. To start decoding at a position inside a byte, an
empty deflate block is put in front of it, with a length in bits whose remainder
modulo 8 is the position's bit phase. The candidate's bits are then fed unshifted,
exactly as the real decoder saw them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

WINDOW_SIZE = 32768
DEFAULT_MAX_SEARCH_BYTES = 1 << 20

# Scan this many compressed bytes at a time when searching backwards.
_CHUNK_BYTES = 8192
# A dynamic block header needs at most 3 + 5 + 5 + 4 + 19 * 3 bits before its
# code-length code is complete.
_DYNAMIC_HEADER_BITS = 74
# The shortest block is an empty fixed Huffman block: 3 header bits and a 7-bit
# end-of-block code.
_MIN_BLOCK_BITS = 10
# After skipping ahead to the estimated position of limit, start this many
# compressed bytes after it.
_SKIP_MARGIN_BYTES = 16384
# When `compressed` stops mid-stream, a candidate must decode at least this many
# bytes to count as verified.
_MIN_OPEN_END_OUTPUT = 64
_EMPTY_STORED_LENGTHS = b"\x00\x00\xff\xff"
# A byte-aligned empty final stored block: BFINAL 1, BTYPE 00, padding, LEN, NLEN.
_FINAL_EMPTY_STORED_BLOCK = b"\x01" + _EMPTY_STORED_LENGTHS
_CODE_LENGTH_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
# Any 32 KiB window lets the first inflate of a candidate run without a
# "distance too far back" error. Only the output length of that run is used, and the
# length does not depend on the window's contents.
_PLACEHOLDER_WINDOW = bytes(WINDOW_SIZE)
_INVERT_BYTES = bytes(255 - value for value in range(256))


@dataclass(frozen=True)
class BlockBoundary:
    """Start of a deflate block inside a compressed slice.

    bit is the offset of the block's first header bit from the start of the slice,
    counted in deflate bit order (least significant bit of each byte first). plain is
    the index into the known uncompressed data of the first byte the block produces.
    """

    bit: int
    plain: int


def close_with_empty_stored_block(compressed, bit: int) -> bytes:
    """Return the bytes to write after compressed[:bit // 8] to end the kept bits.

    The first returned byte contains the kept bits of the partial byte, with the bits
    from bit % 8 upwards cleared. The 3 header bits of an empty non-final stored block
    follow, then its padding to the byte and its LEN/NLEN bytes 00 00 FF FF. The
    result ends on a byte boundary with the decoder expecting a new block, so a new
    raw deflate stream can follow directly.
    """
    return _close_with_stored_block(compressed, bit, final=False)


def find_block_boundary(
    compressed,
    history,
    limit: int,
    *,
    history_at_stream_start: bool = False,
    stream_ends: bool = False,
    max_search_bytes: int = DEFAULT_MAX_SEARCH_BYTES,
) -> BlockBoundary | None:
    """Find the last deflate block boundary in `compressed` whose output starts at or before `limit`.

    compressed is a contiguous slice of one raw deflate stream that may start and end
    in the middle of a block. history is the uncompressed data that ends exactly where
    a decoder that has read the stream up to the end of `compressed` stops producing
    output. It must start at least 32 KiB before the first byte produced from
    `compressed`, unless history_at_stream_start is true, in which case history[0] is
    the first byte of the stream. limit is an index into history.

    stream_ends must be true when `compressed` ends exactly at the end of the deflate
    stream, and false when the stream goes on after it. With a wrong value a true
    boundary is rejected, or a stored block whose BFINAL bit is unknown may be
    accepted.

    When stream_ends is false, a boundary counts only if at least 64 bytes of history
    follow it, so history should extend at least that far past limit.

    Only the last max_search_bytes bytes of `compressed` are searched for a first
    boundary. Returns the boundary with the largest bit position whose plain position
    is at most limit, or None if none is found.
    """
    search = _Search(
        compressed=memoryview(compressed).cast("B"),
        history=memoryview(history).cast("B"),
        limit=limit,
        history_at_stream_start=history_at_stream_start,
        stream_ends=stream_ends,
    )
    return search.run(first_byte=max(0, len(search.compressed) - max_search_bytes))


def _close_with_stored_block(compressed, bit: int, *, final: bool) -> bytes:
    byte, phase = divmod(bit, 8)
    kept = compressed[byte] & ((1 << phase) - 1) if phase else 0
    # The header is BFINAL then BTYPE 00. When it does not fit in the partial byte,
    # its last bits and the padding take one more byte of zeros.
    value = kept | (int(final) << phase)
    header_bytes = (phase + 3 + 7) // 8
    return value.to_bytes(header_bytes, "little") + _EMPTY_STORED_LENGTHS


class _BitWriter:
    def __init__(self) -> None:
        self.value = 0
        self.length = 0

    def write(self, value: int, width: int) -> None:
        self.value |= value << self.length
        self.length += width

    def write_code(self, code: int, width: int) -> None:
        """Write a Huffman code, which deflate packs starting with its most significant bit."""
        reversed_code = int(format(code, f"0{width}b")[::-1], 2)
        self.write(reversed_code, width)


def _empty_dynamic_block(code_length_entries: int) -> _BitWriter:
    """Build a non-final dynamic block that produces no output, 206 + 3 * entries bits long.

    The literal/length code gives literals 0..254 length 8 and literal 255 and the
    end-of-block code length 9, a complete code as zlib requires. The single distance
    code has length 0. The code-length code uses symbols 0, 8, 9 and 16 at length 2
    each, and entries beyond those in the transmitted order are 0, so the number of
    entries (7 to 19) sets the block's length in bits.
    """
    code_length_codes = {0: 0b00, 8: 0b01, 9: 0b10, 16: 0b11}
    writer = _BitWriter()
    writer.write(0, 1)  # BFINAL
    writer.write(2, 2)  # BTYPE: dynamic Huffman codes
    writer.write(0, 5)  # HLIT: 257 literal/length codes
    writer.write(0, 5)  # HDIST: 1 distance code
    writer.write(code_length_entries - 4, 4)  # HCLEN
    for symbol in _CODE_LENGTH_ORDER[:code_length_entries]:
        writer.write(2 if symbol in code_length_codes else 0, 3)

    writer.write_code(code_length_codes[8], 2)  # literal 0
    for repeat in [6] * 41 + [5, 3]:  # literals 1..254 repeat the previous length
        writer.write_code(code_length_codes[16], 2)
        writer.write(repeat - 3, 2)
    writer.write_code(code_length_codes[9], 2)  # literal 255
    writer.write_code(code_length_codes[9], 2)  # end-of-block
    writer.write_code(code_length_codes[0], 2)  # the distance code is unused

    writer.write_code(0b111111111, 9)  # end-of-block: the last code of length 9
    return writer


def _build_phase_prefixes() -> tuple[tuple[bytes, int], ...]:
    """Return, for each bit phase p, the whole bytes and the low p bits of an empty block.

    Each block is (206 + 3 * entries) bits long with a remainder of p modulo 8, so its
    last p bits share a byte with the first 8 - p bits of a candidate block.
    """
    prefixes: list[tuple[bytes, int] | None] = [None] * 8
    prefixes[0] = (b"", 0)
    for entries in range(7, 15):
        writer = _empty_dynamic_block(entries)
        phase = writer.length % 8
        if phase == 0:
            continue
        whole_bytes = writer.length // 8
        low_bits = writer.value >> (8 * whole_bytes)
        prefixes[phase] = (writer.value.to_bytes(whole_bytes + 1, "little")[:whole_bytes], low_bits)
    assert all(prefix is not None for prefix in prefixes)
    return tuple(prefixes)  # type: ignore[arg-type]


_PHASE_PREFIXES = _build_phase_prefixes()


@dataclass
class _InflateResult:
    produced: int
    ends_cleanly: bool  # the stream ended and no input was left over
    reached_end: bool  # the decoder stopped at the end of a final block
    consumed: int  # input bytes used, counted from the candidate's first byte


@dataclass
class _Search:
    compressed: memoryview
    history: memoryview
    limit: int
    history_at_stream_start: bool
    stream_ends: bool
    # The verified boundary with the smallest bit position found so far whose plain
    # position is above limit. Candidates are decoded up to it instead of to the end.
    upper: BlockBoundary | None = None

    # ---- backward search for a first verified boundary ----

    def run(self, first_byte: int) -> BlockBoundary | None:
        """Search backwards from the end for a proven boundary at or before limit, then walk forward.

        A candidate that decodes the known data to the end is proven only if its
        header is dynamic or stored. Take a position inside a fixed Huffman block
        whose next 3 bits read as a fixed block header and end on a symbol boundary.
        It decodes exactly the same symbols as the real block, so it passes
        verification without being a boundary. Such a candidate only serves as a
        starting point: the block ends found by walking forward from it are real.

        Once a boundary above limit is proven, the search skips ahead to where limit
        probably lies. The walk forward from the first boundary found at or before
        limit still visits every block skipped over, unless no such boundary lies
        between the start of the search and the skip target.

        NOTE: a fixed Huffman block that follows a dynamic or stored block is found
        only by walking from that earlier block, so it is missed when the earlier
        block starts before the slice. The result is then an earlier boundary or None.
        """
        end_bit = 8 * len(self.compressed)
        hi_byte = len(self.compressed)
        while hi_byte > first_byte:
            lo_byte = max(first_byte, hi_byte - _CHUNK_BYTES)
            next_hi_byte = lo_byte
            for bit, alternative, proven in self._candidates(lo_byte, hi_byte, end_bit):
                if self.upper is not None and bit > self.upper.bit - _MIN_BLOCK_BITS:
                    continue
                plain = self._verify(bit)
                if plain is None:
                    continue
                if alternative is not None and self._verify(alternative) is not None:
                    # Both readings of a stored header decode the same data, and
                    # they splice differently, so neither can be trusted.
                    continue
                boundary = BlockBoundary(bit, plain)
                # A candidate at the slice's first bit that decodes all of history
                # from a stream start is the stream's first block.
                proven = proven or (bit == 0 and plain == 0 and self.history_at_stream_start)
                if proven and plain <= self.limit:
                    return self.walk_forward(boundary)
                if proven:
                    self.upper = boundary
                    next_hi_byte = min(lo_byte, self._estimate_limit_byte(end_bit))
                    if next_hi_byte < lo_byte:
                        break
                elif plain <= self.limit:
                    walked = self.walk_forward(boundary)
                    if walked != boundary:
                        return walked
            hi_byte = max(first_byte, next_hi_byte)
        return None

    def _estimate_limit_byte(self, end_bit: int) -> int:
        """Estimate a byte shortly after the one where the output reaches limit.

        The estimate assumes the compression ratio between limit and the upper
        boundary equals the ratio from the upper boundary to the end of the slice, and
        adds a margin so that it is usually past limit.
        """
        assert self.upper is not None
        later_bits = end_bit - self.upper.bit
        later_bytes = len(self.history) - self.upper.plain
        if later_bytes <= 0:
            return len(self.compressed)
        bits_before_upper = (self.upper.plain - self.limit) * later_bits // later_bytes
        return max(0, (self.upper.bit - bits_before_upper) // 8 + _SKIP_MARGIN_BYTES)

    def _candidates(self, lo_byte: int, hi_byte: int, end_bit: int):
        """Return (bit, alternative, proven) for positions in bytes [lo_byte, hi_byte), highest first.

        alternative is the BFINAL=1 reading of a stored header that is listed with its
        BFINAL=0 reading, or None. proven is True when a verified candidate of this
        kind is a real boundary (dynamic and stored headers), and False when it is
        only a starting point (fixed Huffman headers).
        """
        base_byte = max(0, lo_byte - 1)
        region = bytes(self.compressed[base_byte : hi_byte + 16])
        value = int.from_bytes(region, "little")
        base_bit = 8 * base_byte
        first = 8 * lo_byte - base_bit
        count = min(8 * hi_byte, end_bit - 1) - 8 * lo_byte
        if count <= 0:
            return []
        region_mask = ((1 << count) - 1) << first

        found: dict[int, tuple[int | None, bool]] = {}
        dynamic = _dynamic_header_mask(value, end_bit - base_bit) & region_mask
        fixed = _fixed_after_fixed_mask(value, base_bit) & region_mask
        for mask, proven in ((fixed, False), (dynamic, True)):
            for position in _set_bits(mask):
                found[base_bit + position] = (None, proven)
        for bit, alternative in _stored_candidates(self.compressed, lo_byte, hi_byte):
            if 8 * lo_byte <= bit < end_bit - 1:
                found[bit] = (alternative, True)
        return [(bit, alternative, proven) for bit, (alternative, proven) in sorted(found.items(), reverse=True)]

    # ---- verification ----

    def _verify(self, bit: int) -> int | None:
        """Return the plain position of a verified boundary at `bit`, or None."""
        stop = self.upper
        first_pass = self._inflate(bit, stop, _PLACEHOLDER_WINDOW)
        if first_pass is None or not self._ends_as_expected(first_pass, stop):
            return None
        end_plain = stop.plain if stop is not None else len(self.history)
        plain = end_plain - first_pass.produced
        if plain < 0:
            return None
        if plain < WINDOW_SIZE and not self.history_at_stream_start:
            return None
        second_pass = self._inflate(bit, stop, self._window_before(plain), compare_at=plain)
        if second_pass is None or not self._ends_as_expected(second_pass, stop):
            return None
        return plain

    def _ends_as_expected(self, result: _InflateResult, stop: BlockBoundary | None) -> bool:
        if stop is not None or self.stream_ends:
            return result.ends_cleanly
        # Near the end of a slice that stops mid-stream, a candidate can stop inside
        # its own header and decode nothing, which proves nothing.
        return not result.reached_end and result.produced >= _MIN_OPEN_END_OUTPUT

    def _window_before(self, plain: int) -> bytes:
        return bytes(self.history[max(0, plain - WINDOW_SIZE) : plain])

    def _inflate(
        self,
        bit: int,
        stop: BlockBoundary | None,
        window: bytes,
        *,
        compare_at: int | None = None,
        final: bool | None = None,
        stop_is_exact: bool = False,
    ) -> _InflateResult | None:
        """Raw-inflate from `bit` to `stop` (or to the end), returning None on an error or a mismatch.

        With compare_at, the output must equal history from that index on. With
        final, the candidate's BFINAL bit is replaced. See _pieces for stop_is_exact.
        """
        if stop is not None and stop.bit - bit < _MIN_BLOCK_BITS:
            return None
        decompressor = zlib.decompressobj(-15, zdict=window) if window else zlib.decompressobj(-15)
        produced = 0
        fed = 0
        prefix_length = 0
        for index, piece in enumerate(self._pieces(bit, stop, final, stop_is_exact)):
            if index == 0:
                prefix_length = len(piece) - 1
            if decompressor.eof:
                consumed = fed - len(decompressor.unused_data) - prefix_length
                return _InflateResult(produced, False, True, consumed)
            try:
                output = decompressor.decompress(piece)
            except zlib.error:
                return None
            fed += len(piece)
            if compare_at is not None and output:
                start = compare_at + produced
                if self.history[start : start + len(output)] != output:
                    return None
            produced += len(output)
        consumed = fed - len(decompressor.unused_data) - prefix_length
        clean = decompressor.eof and not decompressor.unused_data
        return _InflateResult(produced, clean, decompressor.eof, consumed)

    def _pieces(self, bit: int, stop: BlockBoundary | None, final: bool | None, stop_is_exact: bool):
        """Yield the input for a decoder that starts at `bit`, in pieces that grow.

        Small first pieces let zlib reject a false candidate after a few bytes. At
        `stop` the stream is ended with an empty non-final stored block and an empty
        final one. That works at any position inside the zero padding of a stored
        header, which is what a stored boundary reports. With stop_is_exact, an empty
        final stored block starts exactly at `stop` instead, so the stream ends
        cleanly only if the decoder is between blocks at that very bit.
        """
        byte, phase = divmod(bit, 8)
        prefix, low_bits = _PHASE_PREFIXES[phase]
        first = low_bits | (self.compressed[byte] & (0xFF << phase) & 0xFF)
        if final is not None:
            first = (first & ~(1 << phase)) | (int(final) << phase)
        yield prefix + bytes([first])

        end = stop.bit // 8 if stop is not None else len(self.compressed)
        position = byte + 1
        size = 64
        while position < end:
            yield self.compressed[position : min(end, position + size)]
            position += size
            size = min(size * 8, 1 << 20)
        if stop is not None and stop_is_exact:
            yield _close_with_stored_block(self.compressed, stop.bit, final=True)
        elif stop is not None:
            yield _close_with_stored_block(self.compressed, stop.bit, final=False) + _FINAL_EMPTY_STORED_BLOCK

    # ---- forward walk from a verified boundary ----

    def walk_forward(self, anchor: BlockBoundary) -> BlockBoundary:
        """Follow blocks from `anchor` while they start at or before limit; return the last one.

        The backward search cannot test every position as a fixed Huffman block,
        because a quarter of all positions would need zlib. Blocks after the anchor
        are found by decoding instead: forcing BFINAL on makes zlib stop at the end
        of the block.
        """
        current = anchor
        while True:
            if self.compressed[current.bit // 8] >> (current.bit % 8) & 1:
                return current  # a final block has no successor
            window = self._window_before(current.plain)
            block = self._inflate(current.bit, None, window, compare_at=current.plain, final=True)
            if block is None or not block.reached_end:
                return current
            next_plain = current.plain + block.produced
            if next_plain > self.limit:
                return current
            next_bit = self._block_end(current, block, window)
            if next_bit is None or next_bit >= 8 * len(self.compressed):
                return current
            current = BlockBoundary(next_bit, next_plain)

    def _block_end(self, start: BlockBoundary, block: _InflateResult, window: bytes) -> int | None:
        """Return the exact bit where the block at `start` ends.

        When zlib ends a final block it has used fewer than 8 bits of the last byte it
        read, so the end lies in that byte. Each of its 8 bit positions is tried as
        the start of a closing final stored block: only the true end decodes to the
        block's output and ends exactly there.
        """
        last_byte = start.bit // 8 + block.consumed
        for end_bit in range(8 * last_byte - 7, 8 * last_byte + 1):
            if end_bit - start.bit < _MIN_BLOCK_BITS:
                continue
            stop = BlockBoundary(end_bit, start.plain + block.produced)
            result = self._inflate(start.bit, stop, window, stop_is_exact=True)
            if result is not None and result.ends_cleanly and result.produced == block.produced:
                return end_bit
        return None


def _stored_candidates(compressed: memoryview, lo_byte: int, hi_byte: int):
    """Yield (bit, alternative) for stored block headers whose LEN field starts in [lo_byte + 1, hi_byte].

    A stored header is 3 bits, zero padding (as zlib, GNU gzip and pigz write it), then
    LEN and its complement NLEN. The header's BFINAL bit is ambiguous when it is 1: it
    may be the last bit of the previous block instead. Such a header is yielded as its
    BFINAL=0 reading (the highest position) with the BFINAL=1 reading as alternative,
    and the BFINAL=1 reading is also yielded on its own.
    """
    data = bytes(compressed[lo_byte + 1 : hi_byte + 5])
    if len(data) < 4:
        return
    equal = int.from_bytes(data[2:], "little") ^ int.from_bytes(data.translate(_INVERT_BYTES)[:-2], "little")
    matches = equal.to_bytes(len(data) - 2, "little")
    position = -1
    while True:
        position = matches.find(b"\x00\x00", position + 1)
        if position < 0:
            return
        length_byte = lo_byte + 1 + position
        header_bits = int.from_bytes(compressed[length_byte - 2 : length_byte], "little")
        if length_byte < 2:
            header_bits = int.from_bytes(compressed[:length_byte], "little") << (8 * (2 - length_byte))
        # header_bits contains the 16 bits before LEN, and bit 15 is the one just before it.
        if header_bits >> 14 & 0b11:
            continue  # BTYPE or padding bits are set
        final_reading = None
        for offset in range(13, 5, -1):  # header positions 8k-3 down to 8k-10
            if header_bits >> offset & 1:
                final_reading = 8 * length_byte - 16 + offset
                break
        lowest_header_bit = 8 * length_byte - 10
        if final_reading is not None and final_reading >= max(0, lowest_header_bit):
            if final_reading != 8 * length_byte - 3:
                yield 8 * length_byte - 3, final_reading
            yield final_reading, None
        elif 8 * length_byte - 3 >= 0:
            yield 8 * length_byte - 3, None


def _set_bits(mask: int):
    """Yield the indexes of the set bits of a non-negative int."""
    binary = bin(mask)[:1:-1]  # least significant bit first
    position = binary.find("1")
    while position >= 0:
        yield position
        position = binary.find("1", position + 1)


def _fixed_after_fixed_mask(value: int, base_bit: int) -> int:
    """Mark positions that start a fixed Huffman block right after a 7-bit fixed end-of-block code.

    Positions within the first 7 bits of the slice cannot be checked and are kept.
    """
    mask = (value >> 1) & ~(value >> 2)
    preceding = 0
    for shift in range(1, 8):
        preceding |= value << shift
    mask &= ~preceding | ((1 << max(0, 7 - base_bit)) - 1)
    return mask


def _dynamic_header_mask(value: int, available: int) -> int:
    """Mark positions where a dynamic block header could start, one bit per position.

    The checks run on all positions at once, one bit lane each. They are BTYPE 10,
    HLIT and HDIST at most 29, and code-length code lengths whose Kraft sum over the
    first HCLEN + 4 entries is exactly 2**7, because zlib requires a complete code. Positions whose
    header would run past the end of the data (`available` bits) are kept when their
    block type matches.
    """
    type_mask = ~(value >> 1) & (value >> 2)
    type_mask &= ~((value >> 4) & (value >> 5) & (value >> 6) & (value >> 7))
    type_mask &= ~((value >> 9) & (value >> 10) & (value >> 11) & (value >> 12))

    hclen_bits = [value >> (13 + index) for index in range(4)]
    hclen_inverse = [~bits for bits in hclen_bits]
    # planes[p] is bit p of the running Kraft sum, in units of 2**-7.
    planes = [0] * 8
    overflow = 0
    complete = 0
    for entry in range(19):
        low, middle, high = (value >> (17 + 3 * entry + offset) for offset in range(3))
        low_inverse, middle_inverse, high_inverse = ~low, ~middle, ~high
        pairs = (
            low_inverse & middle_inverse,
            low & middle_inverse,
            low_inverse & middle,
            low & middle,
        )
        # One-hot term: a code length L in 1..7 adds 2**(7 - L), that is bit 7 - L.
        terms = [0] * 8
        for length in range(1, 8):
            pair = pairs[length & 3]
            terms[7 - length] = pair & (high if length & 4 else high_inverse)
        carry = 0
        for plane in range(8):
            incoming = terms[plane] | carry
            carry = planes[plane] & incoming
            planes[plane] ^= incoming
        overflow |= carry

        if entry >= 3:
            hclen = entry - 3
            selected = ~overflow & planes[7]
            for index in range(4):
                selected &= hclen_bits[index] if hclen >> index & 1 else hclen_inverse[index]
            lower = planes[0] | planes[1] | planes[2] | planes[3] | planes[4] | planes[5] | planes[6]
            complete |= selected & ~lower

    near_end = ((1 << _DYNAMIC_HEADER_BITS) - 1) << max(0, available - _DYNAMIC_HEADER_BITS)
    return type_mask & (complete | near_end)
