"""Failures: exit code 1, one ERROR line, the same reason in /opt/ml/output/message, no output."""

import json
import os
from pathlib import Path

import pytest

from tests import archives
from tests.integration.support import (CODE_DIR, FAILURE_DIR, OUTPUT_DIR, Job, assert_failed,
                                       assert_failure_message, files_under,
                                       write_hyperparameters, write_model)

pytestmark = pytest.mark.container

# Runs the job as a child process, then prints the files left in the output
# folder as JSON on stdout and exits with the job's exit code. A tmpfs output
# vanishes with its container, so only a process inside can list it.
LIST_OUTPUT_AFTER_JOB = f"""
import json, os, subprocess, sys
code = subprocess.call(sys.argv[1:])
found = [os.path.join(folder, name) for folder, _, names in os.walk({OUTPUT_DIR!r})
         for name in names]
print(json.dumps(sorted(found)))
sys.exit(code)
"""


def job_with_inputs(image: str, folder: Path, output_dir: Path, failure_dir: Path, *,
                    model: bool = True, hyperparameters: bool = True) -> Job:
    """Return a job with the usual subfolder mounts, leaving out the inputs not wanted."""
    job = Job(image).mount(output_dir, OUTPUT_DIR, "rw").mount(failure_dir, FAILURE_DIR, "rw")
    if model:
        write_model(folder / "models" / "model.tar.gz")
        job.mount(folder / "models", f"{CODE_DIR}/models")
    if hyperparameters:
        write_hyperparameters(folder / "hyperparams" / "hyperparameters.json")
        job.mount(folder / "hyperparams", f"{CODE_DIR}/hyperparams")
    return job


@pytest.mark.parametrize(("missing", "code"), [
    ("model", "MODEL_NOT_FOUND"),
    ("hyperparameters", "HYPERPARAMETERS_NOT_FOUND"),
])
def test_missing_input_writes_message(image: str, tmp_path: Path, output_dir: Path,
                                      failure_dir: Path, missing: str, code: str):
    job = job_with_inputs(image, tmp_path, output_dir, failure_dir, **{missing: False})

    result = job.run()

    text = assert_failed(result, code)
    assert_failure_message(failure_dir, code, text)
    assert files_under(output_dir) == []


def truncate(data: bytes) -> bytes:
    return data[:len(data) // 2]


def flip_middle_byte(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


def zip_archive(data: bytes) -> bytes:
    return b"PK\x03\x04" + data


@pytest.mark.parametrize(("damage", "code"), [
    (truncate, "INVALID_ARCHIVE"),
    (flip_middle_byte, "INVALID_ARCHIVE"),
    (archives.crc_mismatch, "INVALID_ARCHIVE"),
    (zip_archive, "INVALID_FORMAT"),
])
def test_damaged_archive_rejected(image: str, tmp_path: Path, output_dir: Path,
                                  failure_dir: Path, damage, code: str):
    job = job_with_inputs(image, tmp_path, output_dir, failure_dir)
    model = tmp_path / "models" / "model.tar.gz"
    model.write_bytes(damage(model.read_bytes()))

    result = job.run()

    text = assert_failed(result, code)
    assert "/opt/ml/code/models/model.tar.gz" in text
    assert_failure_message(failure_dir, code, text)
    assert files_under(output_dir) == []


def test_failure_keeps_previous_output(image: str, tmp_path: Path, output_dir: Path,
                                       failure_dir: Path):
    previous = output_dir / "model" / "model.tar.gz"
    write_model(previous, seed="previous run")
    previous_bytes = previous.read_bytes()
    job = job_with_inputs(image, tmp_path, output_dir, failure_dir)
    model = tmp_path / "models" / "model.tar.gz"
    model.write_bytes(truncate(model.read_bytes()))

    result = job.run()

    assert_failed(result, "INVALID_ARCHIVE")
    assert files_under(output_dir) == ["model/model.tar.gz"]
    assert previous.read_bytes() == previous_bytes


def test_read_only_output_fails(image: str, tmp_path: Path, output_dir: Path, failure_dir: Path):
    job = job_with_inputs(image, tmp_path, output_dir, failure_dir)
    job.mounts = [(host, path, "ro" if path == OUTPUT_DIR else mode)
                  for host, path, mode in job.mounts]

    result = job.run()

    text = assert_failed(result, "OUTPUT_FAILED")
    assert "Read-only file system" in text
    assert_failure_message(failure_dir, "OUTPUT_FAILED", text)
    assert files_under(output_dir) == []


def test_full_output_volume_fails(image: str, docker_client, tmp_path: Path, failure_dir: Path):
    # Random bytes do not compress, so a 4 MiB member cannot fit in 1 MiB.
    members = archives.model_members() + [archives.file("./weights.bin", os.urandom(4 << 20))]
    model = tmp_path / "models" / "model.tar.gz"
    model.parent.mkdir()
    model.write_bytes(archives.gzip_bytes(archives.tar_bytes(members)))
    write_hyperparameters(tmp_path / "hyperparams" / "hyperparameters.json")
    job_command = docker_client.images.get(image).attrs["Config"]["Entrypoint"]
    job = (Job(image, entrypoint=["python3", "-c", LIST_OUTPUT_AFTER_JOB, *job_command],
               tmpfs={OUTPUT_DIR: "size=1m"})
           .mount(model.parent, f"{CODE_DIR}/models")
           .mount(tmp_path / "hyperparams", f"{CODE_DIR}/hyperparams")
           .mount(failure_dir, FAILURE_DIR, "rw"))

    result = job.run()

    text = assert_failed(result, "OUTPUT_FAILED")
    assert "No space left on device" in text
    assert_failure_message(failure_dir, "OUTPUT_FAILED", text)
    assert json.loads(result.stdout) == []
