"""The temporary output file: truncation keeps its SHA-256 right, publishing renames it."""

import hashlib

import pytest

from app.publish import HASH_SNAPSHOT_INTERVAL, HASH_SNAPSHOTS_KEPT, OutputFile

WRITTEN = bytes(range(256)) * (HASH_SNAPSHOT_INTERVAL // 256) * (HASH_SNAPSHOTS_KEPT + 4)


@pytest.mark.parametrize("size", [0, 5 * HASH_SNAPSHOT_INTERVAL + 7, len(WRITTEN) - 1])
def test_truncate_keeps_sha256_past_kept_snapshots(tmp_path, size):
    output = OutputFile(tmp_path)
    for start in range(0, len(WRITTEN), 1 << 16):
        output.write(WRITTEN[start:start + (1 << 16)])

    output.truncate(size)
    output.write(b"tail")

    expected = WRITTEN[:size] + b"tail"
    assert output.sha256() == hashlib.sha256(expected).hexdigest()
    assert output.publish().read_bytes() == expected
