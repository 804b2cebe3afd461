"""Stopping the job mid-repack: `docker stop` (SIGTERM) and SageMaker's StopProcessingJob (SIGINT)."""

import random
import tarfile
import time
from pathlib import Path

import pytest

from tests.integration.support import (CODE_DIR, FAILURE_DIR, OUTPUT_DIR, Job, assert_failed,
                                       assert_failure_message, collect_result, files_under,
                                       wait_for_exit, wait_until, write_hyperparameters)

pytestmark = pytest.mark.container

# Random bytes in a plain tar must all be deflated, and barely compress, so at
# level 9 with one thread the repack takes several seconds on a 2-core machine.
LARGE_MEMBER_SIZE = 256 << 20
SLOW_ARGUMENTS = ["--threads", "1", "--compression-level", "9"]

# The job must exit by itself this soon after the signal. docker stop waits
# STOP_GRACE seconds before it sends SIGKILL, which would show as exit code 137.
PROMPT_EXIT = 10
STOP_GRACE = 30


class RandomBytes:
    """A file-like source of `size` pseudo-random bytes, for tarfile.addfile."""

    def __init__(self, size: int) -> None:
        self._left = size
        self._random = random.Random(20240101)

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        self._left -= size
        return self._random.randbytes(size)


@pytest.fixture(scope="session")
def large_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain (uncompressed) tar model.tar.gz with a 256 MiB member of random bytes."""
    folder = tmp_path_factory.mktemp("large") / "models"
    folder.mkdir()
    path = folder / "model.tar.gz"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        info = tarfile.TarInfo("weights.bin")
        info.size = LARGE_MEMBER_SIZE
        archive.addfile(info, RandomBytes(LARGE_MEMBER_SIZE))
    return path


def temporary_outputs(output_dir: Path) -> list[Path]:
    return list((output_dir / "model").glob(".model.tar.gz.*.tmp"))


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_stop_during_repack_leaves_nothing(image: str, tmp_path: Path, output_dir: Path,
                                           failure_dir: Path, large_model: Path,
                                           signal_name: str):
    write_hyperparameters(tmp_path / "hyperparams" / "hyperparameters.json")
    job = (Job(image, arguments=SLOW_ARGUMENTS)
           .mount(large_model.parent, f"{CODE_DIR}/models")
           .mount(tmp_path / "hyperparams", f"{CODE_DIR}/hyperparams")
           .mount(output_dir, OUTPUT_DIR, "rw")
           .mount(failure_dir, FAILURE_DIR, "rw"))

    with job.start() as container:
        wrapped = container.get_wrapped_container()
        wait_until(lambda: temporary_outputs(output_dir), timeout=60,
                   description="the job to create its temporary output")
        wrapped.reload()
        assert wrapped.status == "running", "the job ended before it could be stopped"

        signalled = time.monotonic()
        if signal_name == "SIGTERM":
            wrapped.stop(timeout=STOP_GRACE)
        else:
            wrapped.kill(signal="SIGINT")
        result = collect_result(container, wait_for_exit(container, timeout=STOP_GRACE))
        exit_seconds = time.monotonic() - signalled

    text = assert_failed(result, "INTERRUPTED")
    assert signal_name in text
    assert exit_seconds < PROMPT_EXIT
    assert_failure_message(failure_dir, "INTERRUPTED", text)
    assert files_under(output_dir) == []
