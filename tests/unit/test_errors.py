"""Each way the job fails: the exact error code, a useful message, nothing left behind."""

import tarfile

import pytest

from tests import archives
from tests.archives import device, file, folder, hardlink, symlink


def assert_failed(outcome, code: str, *fragments: str) -> None:
    assert outcome.exit_code == 1, outcome.log
    error_lines = [line for line in outcome.log.splitlines() if line.startswith("ERROR ")]
    assert len(error_lines) == 1, outcome.log
    assert error_lines[0].startswith(f"ERROR {code}: ")
    message = outcome.message()
    assert message.startswith(f"{code}: ")
    assert message.count("\n") == 1
    assert len(message.encode()) < 1024
    for fragment in fragments:
        assert fragment in message
    assert "Traceback" not in outcome.log
    assert not outcome.output.exists()
    assert outcome.leftovers() == []


def good_tar() -> bytes:
    return archives.tar_bytes(archives.model_members())


@pytest.mark.parametrize("content, looks_like", [
    (b"PK\x03\x04" + b"\x00" * 100, "a ZIP archive"),
    (b"<!DOCTYPE html><html><body>Access denied</body></html>", "HTML"),
    (b"", "an empty file"),
    (b"\x28\xb5\x2f\xfd" + b"\x00" * 100, "zstd"),
    (b"just some notes\n", "a text file"),
])
def test_not_a_tar_archive_is_invalid_format(job, content, looks_like):
    assert_failed(job.run(content), "INVALID_FORMAT", looks_like, str(job.model))


def test_truncated_gzip_is_invalid_archive(job):
    model = archives.gzip_bytes(good_tar())
    assert_failed(job.run(model[:len(model) // 2]), "INVALID_ARCHIVE", "ends at byte")


def test_gzip_without_trailer_is_invalid_archive(job):
    model = archives.gzip_bytes(good_tar())
    assert_failed(job.run(model[:-8]), "INVALID_ARCHIVE", "lacks its 8-byte trailer")


def test_crc_mismatch_is_invalid_archive(job):
    model = archives.crc_mismatch(archives.gzip_bytes(good_tar()))
    assert_failed(job.run(model), "INVALID_ARCHIVE", "CRC-32 mismatch")


def test_garbage_after_gzip_is_invalid_archive(job):
    model = archives.gzip_bytes(good_tar()) + b"garbage"
    assert_failed(job.run(model), "INVALID_ARCHIVE", "after the last gzip member")


def test_zero_padding_after_gzip_is_accepted(job):
    outcome = job.run(archives.gzip_bytes(good_tar()) + b"\x00" * 1000)
    assert outcome.exit_code == 0, outcome.log


def test_damaged_header_mid_archive_is_invalid_archive(job):
    tar = bytearray(good_tar())
    second = archives.raw_members(bytes(tar))[1][0].offset
    tar[second + 148:second + 156] = b"9999999\x00"  # header checksum
    assert_failed(job.run(archives.gzip_bytes(bytes(tar))), "INVALID_ARCHIVE",
                  f"offset {second}")


def test_data_after_end_of_archive_is_invalid_archive(job):
    tar = good_tar() + archives.tar_bytes([file("extra.txt", b"x")])
    assert_failed(job.run(archives.gzip_bytes(tar)), "INVALID_ARCHIVE",
                  "after the end-of-archive marker")


def test_archive_of_zero_blocks_is_invalid_archive(job):
    assert_failed(job.run(archives.gzip_bytes(b"\x00" * 10240)), "INVALID_ARCHIVE",
                  "no members")


def test_truncated_member_data_is_invalid_archive(job):
    tar = archives.tar_bytes([file("big.bin", b"z" * 10000)])
    assert_failed(job.run(archives.gzip_bytes(tar[:4096])), "INVALID_ARCHIVE",
                  "member big.bin")


@pytest.mark.parametrize("member, fragment", [
    (file("../evil.sh", b"echo"), "'..' component"),
    (file("/etc/cron.d/x", b"* * * * * root sh"), "absolute path"),
    (symlink("blob", "../../blobs/abc"), "outside the archive"),
    (symlink("abs", "/etc/passwd"), "outside the archive"),
    (device("null"), "device file"),
    (hardlink("orphan", "missing.bin"), "not an earlier member"),
])
def test_unsafe_member_is_unsafe_archive(job, member, fragment):
    tar = archives.tar_bytes([folder("./"), file("./ok.txt", b"ok"), member])
    assert_failed(job.run(archives.gzip_bytes(tar)), "UNSAFE_ARCHIVE", member.info.name,
                  fragment)


@pytest.mark.parametrize("content, fragment", [
    (b'{"epochs": 3', "not valid JSON"),
    (b'["epochs", 3]', "JSON array at the top level"),
    (b'{"lr": NaN}', "NaN"),
    (b'{"lr": Infinity}', "Infinity"),
    (b'{"a": 1, "a": 2}', "'a' more than once"),
    (b'{"a": 1} trailing', "Extra data at line 1, column 10"),
    (b'{"a": "\xff"}', "not valid UTF-8 at byte 7"),
    ('{"a": 1}'.encode("utf-16"), "UTF-16"),
    (b" " * (1 << 20) + b"{}", "larger than the 1024 KiB limit"),
])
def test_bad_hyperparameters_is_invalid_hyperparameters(job, content, fragment):
    outcome = job.run(archives.gzip_bytes(good_tar()), content)
    assert_failed(outcome, "INVALID_HYPERPARAMETERS", fragment, str(job.hyperparameters))


def test_hyperparameters_with_bom_is_archived_without_it(job):
    outcome = job.run(archives.gzip_bytes(good_tar()), b"\xef\xbb\xbf" + b'{"a": "1"}')
    assert outcome.exit_code == 0, outcome.log
    assert "byte order mark" in outcome.log
    with tarfile.open(outcome.output) as archive:
        assert archive.extractfile("hyperparameters.json").read() == b'{"a": "1"}'


def test_unwritable_output_is_output_failed(job, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    outcome = job.run(archives.gzip_bytes(good_tar()), b"{}", "--output-dir", str(blocker))
    assert outcome.exit_code == 1
    assert outcome.message().startswith("OUTPUT_FAILED: ")
    assert str(blocker) in outcome.message()


def test_failure_message_error_keeps_error(job, tmp_path):
    job.failure_message = tmp_path / "missing-parent" / "file" / "message"
    (tmp_path / "missing-parent").write_text("a file, so no folder can be made here")
    outcome = job.run(b"PK\x03\x04")
    assert outcome.exit_code == 1
    assert "ERROR INVALID_FORMAT: " in outcome.log
    assert "Could not write the failure message" in outcome.log


@pytest.mark.parametrize("arguments, fragment", [
    (["--compression-level", "12"], "not a compression level from 1 to 9"),
    (["--threads", "0"], "must be 1 or more"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_bad_command_line_is_invalid_argument(tmp_path, capsys, arguments, fragment):
    from app import main

    message = tmp_path / "message"
    code = main([*arguments, "--failure-message", str(message)])

    log = capsys.readouterr().err
    assert code == 1
    assert "ERROR INVALID_ARGUMENT: " in log
    assert message.read_text().startswith("INVALID_ARGUMENT: ")
    assert fragment in message.read_text()


@pytest.mark.parametrize("content, looks_like", [
    (b"\x89HDF\r\n\x1a\n" + bytes(600), "an HDF5 file"),
    (b'{"weights": [0.1, 0.2]}\n' * 30, "a text file starting with"),
    (bytes(range(256)) * 3, "binary data starting with 00 01 02"),
])
def test_gzip_of_a_single_file_is_invalid_format(job, content, looks_like):
    outcome = job.run(archives.gzip_bytes(content))
    assert_failed(outcome, "INVALID_FORMAT", "decompresses to", looks_like, "not a tar archive")


def test_hyperparameters_with_huge_integer_is_invalid(job):
    outcome = job.run(archives.gzip_bytes(good_tar()), b'{"seed": ' + b"9" * 5000 + b"}")
    assert_failed(outcome, "INVALID_HYPERPARAMETERS", "write very long numbers as strings")


@pytest.mark.parametrize("epoch, expected", [("-1", 0), ("99999999999", 8**11 - 1)])
def test_out_of_range_mtime_is_clamped(job, monkeypatch, epoch, expected):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
    outcome = job.run(archives.gzip_bytes(good_tar()))
    assert outcome.exit_code == 0, outcome.log
    assert "outside what a tar header holds" in outcome.log
    with tarfile.open(outcome.output) as archive:
        assert archive.getmember("hyperparameters.json").mtime == expected


def test_cut_after_long_name_is_invalid(job):
    tar = archives.tar_bytes([file("./" + "n" * 150, b"data")], tarfile.GNU_FORMAT)
    assert_failed(job.run(archives.gzip_bytes(tar[:1024])), "INVALID_ARCHIVE", "offset 0")
