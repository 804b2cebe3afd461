"""The job end to end, in-process: what it writes for each kind of valid archive."""

import tarfile

import pytest

from tests import archives
from tests.archives import file, folder, symlink
from tests.unit.conftest import assert_repacked

HYPERPARAMETERS = b'{"epochs": "3", "learning_rate": "0.001"}\n'


@pytest.mark.parametrize("kind", ["gzip", "gzip-multi", "bz2", "xz", "plain"])
@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_repack_keeps_every_member_for_each_input_kind(job, kind, tar_format):
    tar = archives.tar_bytes(archives.model_members(), tar_format)

    outcome = job.run(archives.compress(tar, kind), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert outcome.leftovers() == []


@pytest.mark.parametrize("recompress", [False, True])
def test_repack_keeps_long_names_pax_records_and_links(job, recompress):
    long_name = "./" + "/".join(["deep-folder-name"] * 8) + "/weights.bin"
    pax = file("./unicode-é.txt", b"caf\xc3\xa9")
    pax.info.pax_headers = {"comment": "trained elsewhere", "SCHILY.xattr.user.tag": "v1"}
    members = [folder("./"), file(long_name, b"w" * 700), pax,
               symlink("./" + "l" * 120, long_name[2:]), file("./exec.sh", b"#!/bin/sh\n", mode=0o755)]
    tar = archives.tar_bytes(members, tarfile.PAX_FORMAT)

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS,
                      *(["--recompress"] if recompress else []))

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)


@pytest.mark.parametrize("position", ["first", "middle", "last"])
@pytest.mark.parametrize("name", ["hyperparameters.json", "./hyperparameters.json"])
def test_repack_replaces_existing_hyperparameters(job, position, name):
    members = archives.model_members()
    old = file(name, b'{"old": true}')
    index = {"first": 1, "middle": 3, "last": len(members)}[position]
    members.insert(index, old)
    tar = archives.tar_bytes(members)

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert "Replacing the archive's own hyperparameters.json" in outcome.log


def test_repack_replaces_every_copy_of_hyperparameters(job):
    members = [file("hyperparameters.json", b"{}"), *archives.model_members(),
               file("./hyperparameters.json", b'{"second": 1}')]
    tar = archives.tar_bytes(members)

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)


def test_repack_keeps_nested_hyperparameters(job):
    members = [*archives.model_members(), file("./code/hyperparameters.json", b'{"nested": 1}')]
    tar = archives.tar_bytes(members)

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    with tarfile.open(outcome.output) as archive:
        assert archive.extractfile("./code/hyperparameters.json").read() == b'{"nested": 1}'


def test_repack_reads_tarfile_level_9_archive(job, tmp_path):
    source = tmp_path / "level9.tar.gz"
    with tarfile.open(source, "w:gz", compresslevel=9) as archive:
        for member in archives.model_members():
            archive.addfile(member.info, None if member.data is None else
                            __import__("io").BytesIO(member.data))
    tar = archives.decompress(source.read_bytes())

    outcome = job.run(source.read_bytes(), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)


def test_repack_output_is_identical_on_every_run(job):
    tar = archives.tar_bytes(archives.model_members())
    model = archives.gzip_bytes(tar)

    first = job.run(model, HYPERPARAMETERS).output.read_bytes()
    second = job.run(model, HYPERPARAMETERS).output.read_bytes()

    assert first == second


def test_repack_new_member_takes_source_date_epoch(job, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    tar = archives.tar_bytes(archives.model_members())

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    with tarfile.open(outcome.output) as archive:
        assert archive.getmember("hyperparameters.json").mtime == 1600000000


def test_repack_logs_summary_and_sha256(job):
    import hashlib

    tar = archives.tar_bytes(archives.model_members())

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    digest = hashlib.sha256(outcome.output.read_bytes()).hexdigest()
    assert f"INFO Wrote {outcome.output}: 8 members, sha256 {digest}" in outcome.log
    assert "Member ./shards/model-00001.safetensors (293.0 KiB)" in outcome.log


def test_repack_caps_member_listing(job):
    members = [file(f"./f{i:04d}.txt", b"x") for i in range(120)]
    tar = archives.tar_bytes(members)

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert "Member ./f0049.txt" in outcome.log
    assert "Member ./f0050.txt" not in outcome.log
    assert "... and 70 more members" in outcome.log


def test_repack_replaces_older_output(job):
    job.output_dir.mkdir()
    (job.output_dir / "model.tar.gz").write_bytes(b"old output")
    tar = archives.tar_bytes(archives.model_members())

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS)

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, HYPERPARAMETERS)
    assert outcome.leftovers() == []


@pytest.mark.parametrize("extra", [[], ["--recompress"], ["--threads", "1"]])
def test_repack_leaves_no_threads_running(job, extra):
    import threading

    before = set(threading.enumerate())
    tar = archives.tar_bytes(archives.model_members())

    outcome = job.run(archives.gzip_bytes(tar), HYPERPARAMETERS, *extra)

    assert outcome.exit_code == 0, outcome.log
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=5)
        assert not thread.is_alive(), f"thread {thread.name} still runs after the job"
