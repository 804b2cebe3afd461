"""Helpers for the container tests: run the image, build fixture archives, check the output."""

import contextlib
import dataclasses
import hashlib
import io
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests import archives

# Ryuk, testcontainers' clean-up container, would be pulled from a registry,
# and Job.start removes its containers itself. testcontainers reads this
# variable when it first starts a container.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

import requests.exceptions  # noqa: E402
from testcontainers.core.container import DockerContainer  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]

CODE_DIR = "/opt/ml/code"
PROCESSING_DIR = "/opt/ml/processing"
OUTPUT_DIR = f"{PROCESSING_DIR}/output"
OUTPUT_ARCHIVE = f"{OUTPUT_DIR}/model/model.tar.gz"
FAILURE_DIR = "/opt/ml/output"

# Generous for a 2-core machine, where the small fixtures finish in about a second.
JOB_TIMEOUT = 120

SUCCESS_LINE = re.compile(r"^INFO Wrote (?P<path>\S+): (?P<members>\d+) members, "
                          r"sha256 (?P<sha256>[0-9a-f]{64})$", re.MULTILINE)
ERROR_LINE = re.compile(r"^ERROR (?P<code>[A-Z_]+): (?P<text>.+)$", re.MULTILINE)


@dataclasses.dataclass
class BuiltImage:
    """The image under test, with the build arguments it was built from."""

    id: str
    tag: str
    build_args: dict[str, str]


# --- Running the image -----------------------------------------------------------------------

@dataclasses.dataclass
class JobResult:
    """How a container run ended: its exit code and its stdout and stderr text."""

    exit_code: int
    stdout: str
    stderr: str

    def error_codes(self) -> list[str]:
        return [match["code"] for match in ERROR_LINE.finditer(self.stderr)]


@dataclasses.dataclass
class Job:
    """One container run of the image: its bind mounts, arguments and other settings."""

    image: str
    mounts: list[tuple[Path, str, str]] = dataclasses.field(default_factory=list)
    arguments: list[str] = dataclasses.field(default_factory=list)
    tmpfs: dict[str, str] = dataclasses.field(default_factory=dict)
    entrypoint: list[str] | None = None

    def mount(self, host: Path, container_path: str, mode: str = "ro") -> "Job":
        self.mounts.append((host, container_path, mode))
        return self

    @contextlib.contextmanager
    def start(self) -> Iterator[DockerContainer]:
        """Start the container and remove it on exit, whatever happened."""
        container = DockerContainer(self.image, command=self.arguments or None)
        for host, container_path, mode in self.mounts:
            container.with_volume_mapping(str(host), container_path, mode)
        for container_path, options in self.tmpfs.items():
            container.with_tmpfs_mount(container_path, options)
        if self.entrypoint is not None:
            container.with_kwargs(entrypoint=self.entrypoint)
        try:
            container.start()
            yield container
        finally:
            container.stop()

    def run(self, timeout: float = JOB_TIMEOUT) -> JobResult:
        """Run the container to its end and return how it ended."""
        with self.start() as container:
            exit_code = wait_for_exit(container, timeout)
            return collect_result(container, exit_code)


def wait_for_exit(container: DockerContainer, timeout: float) -> int:
    """Return the container's exit code; fail the test if it runs longer than `timeout` s."""
    try:
        status = container.get_wrapped_container().wait(timeout=timeout)
    except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
        _, stderr = container.get_logs()
        pytest.fail(f"the job did not exit within {timeout} s; its stderr so far:\n"
                    f"{stderr.decode(errors='replace')}")
    return int(status["StatusCode"])


def collect_result(container: DockerContainer, exit_code: int) -> JobResult:
    stdout, stderr = container.get_logs()
    return JobResult(exit_code, stdout.decode(errors="replace"), stderr.decode(errors="replace"))


def wait_until(condition: Callable[[], bool], timeout: float, description: str) -> None:
    """Poll `condition` until it is true; fail the test naming `description` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {description}")
        time.sleep(0.02)


# --- Fixture archives and checks --------------------------------------------------------------

def sample_members(seed: str) -> list[archives.Member]:
    """Return a small model's members, with one file whose bytes depend on `seed`.

    Archives from different seeds differ, so a test can tell which input the job picked.
    """
    return archives.model_members() + [
        archives.file("./source.txt", f"archive {seed}\n".encode(), mode=0o600, uid=0, gid=0,
                      uname="root", gname="root"),
    ]


def write_model(path: Path, seed: str = "a") -> Path:
    """Write a gzip-compressed model archive to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(archives.gzip_bytes(archives.tar_bytes(sample_members(seed))))
    return path


def write_hyperparameters(path: Path, seed: str = "a") -> bytes:
    """Write a small hyperparameters.json to `path`; return its bytes."""
    data = f'{{"epochs": "3", "learning_rate": "0.001", "run": "{seed}"}}\n'.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def tar_stream(path: Path) -> bytes:
    """Return the tar stream of a gzip-compressed or plain archive, checking every CRC."""
    data = path.read_bytes()
    return archives.decompress(data) if data[:2] == b"\x1f\x8b" else data


def assert_repacked(output: Path, model: Path, hyperparameters: bytes) -> None:
    """Check `output` is `model` plus `hyperparameters` as its one root hyperparameters.json.

    Every other member must come through unchanged: the same header and data
    bytes, in the same order.
    """
    assert output.is_file(), f"no output archive at {output}"
    assert output.read_bytes()[:2] == b"\x1f\x8b", "the output is not gzip-compressed"
    written = archives.raw_members(tar_stream(output))
    original = archives.raw_members(tar_stream(model))

    added = [info for info, _ in written if archives.is_root_hyperparameters(info)]
    assert len(added) == 1, f"expected one hyperparameters.json, found {len(added)}"
    assert added[0].isreg()
    with tarfile.open(fileobj=io.BytesIO(tar_stream(output)), mode="r:") as archive:
        assert archive.extractfile(added[0].name).read() == hyperparameters

    kept = [(info.name, raw) for info, raw in written if not archives.is_root_hyperparameters(info)]
    expected = [(info.name, raw) for info, raw in original
                if not archives.is_root_hyperparameters(info)]
    assert [name for name, _ in kept] == [name for name, _ in expected]
    for (name, got), (_, want) in zip(kept, expected):
        assert got == want, f"member {name} changed"


def assert_success_logged(result: JobResult, output: Path) -> None:
    """Check the success line names the output, its member count and its SHA-256."""
    assert result.exit_code == 0, f"exit code {result.exit_code}; stderr:\n{result.stderr}"
    assert result.error_codes() == []
    matches = list(SUCCESS_LINE.finditer(result.stderr))
    assert matches, f"no 'INFO Wrote' line in the logs:\n{result.stderr}"
    assert matches[-1]["path"] == OUTPUT_ARCHIVE
    assert int(matches[-1]["members"]) == len(archives.raw_members(tar_stream(output)))
    assert matches[-1]["sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()


def assert_failed(result: JobResult, code: str) -> str:
    """Check the run failed with exactly one ERROR line carrying `code`; return its text."""
    assert result.exit_code == 1, f"exit code {result.exit_code}; stderr:\n{result.stderr}"
    assert result.error_codes() == [code], result.stderr
    assert "Traceback" not in result.stderr
    return ERROR_LINE.search(result.stderr)["text"]


def assert_failure_message(failure_dir: Path, code: str, text: str) -> None:
    """Check the failure message file contains one line, `<code>: <text>`, under 1 KiB."""
    message = (failure_dir / "message").read_bytes()
    assert message.decode("utf-8") == f"{code}: {text}\n"
    assert len(message) < 1024


def files_under(folder: Path) -> list[str]:
    """Return the paths of all files (not folders) under `folder`, relative to it."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if not path.is_dir())
