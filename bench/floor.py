"""Inflate a gzip file and discard the output: the floor for any tool that validates it.

Reads 1 MiB at a time and starts a new decompressor at each gzip member boundary,
so multi-member files count in full. Prints the member count and inflated size.

Usage: python3 floor.py ARCHIVE
"""

import sys
import zlib

CHUNK = 1 << 20


def main():
    members, inflated = 1, 0
    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    with open(sys.argv[1], "rb", buffering=0) as stream:
        while chunk := stream.read(CHUNK):
            while chunk:
                inflated += len(decompressor.decompress(chunk))
                if not decompressor.eof:
                    break
                chunk = decompressor.unused_data
                if chunk:
                    members += 1
                    decompressor = zlib.decompressobj(zlib.MAX_WBITS | 16)
    if not decompressor.eof:
        sys.exit("truncated gzip stream")
    print(f"gzip members: {members}, inflated bytes: {inflated}")


if __name__ == "__main__":
    main()
