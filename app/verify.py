"""Check the output's deflate stream while it is written, on a background thread."""

import zlib

from app.errors import ErrorCode, RepackError
from app.worker import OrderedWorker

MAX_OUTPUT = 1 << 22


class Verifier:
    """Inflates the output's new deflate data and checks it against the gzip trailer.

    It starts from the state of a decoder that has read the output up to some
    point: `decompressor`, with the `crc` and `length` of what that decoder
    produced. The bytes before that point are the input's own, checked while
    reading, so together this proves the whole gzip member.
    """

    def __init__(self, decompressor: "zlib._Decompress", crc: int, length: int,
                 inline: bool = False) -> None:
        self._decompressor = decompressor
        self._crc = crc
        self._length = length
        self._trailing = 0
        self._invalid: str | None = None
        self._worker = OrderedWorker(self._inflate, "verify", inline)

    def feed(self, data: bytes | memoryview) -> None:
        self._worker.submit(bytes(data))

    def close(self) -> None:
        """Stop the background thread without checking (the run failed)."""
        self._worker.close()

    def check(self, crc: int, length: int, output_name: str) -> None:
        """Raise INTERNAL_ERROR unless the stream ended cleanly with this CRC-32 and length."""
        self._worker.drain()
        self._worker.close()
        if self._invalid is not None:
            problem = f"its deflate data is invalid: {self._invalid}"
        elif not self._decompressor.eof:
            problem = "its deflate data has no final block"
        elif self._trailing:
            problem = f"{self._trailing} bytes follow its deflate data"
        elif (self._crc, self._length) != (crc, length):
            problem = (f"its deflate data decodes to CRC-32 {self._crc:08x} and {self._length} "
                       f"bytes, not {crc:08x} and {length}")
        else:
            return
        raise RepackError(ErrorCode.INTERNAL_ERROR, f"the output {output_name} failed "
                                                    f"verification: {problem}; nothing was published")

    def _inflate(self, data: bytes) -> None:
        if self._invalid is not None:
            return
        if self._decompressor.eof:
            self._trailing += len(data)
            return
        while data:
            try:
                output = self._decompressor.decompress(data, MAX_OUTPUT)
            except zlib.error as exc:
                self._invalid = str(exc)
                return
            self._crc = zlib.crc32(output, self._crc)
            self._length += len(output)
            if self._decompressor.eof:
                self._trailing += len(self._decompressor.unused_data)
                return
            data = self._decompressor.unconsumed_tail
