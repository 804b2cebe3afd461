"""Fixtures that build the job's image once per session and give each test a fixture tree.

Without a Docker engine the container tests are skipped, except under CI=true,
where they fail, so that CI cannot pass with the image untested.
"""

import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

# The support module sets TESTCONTAINERS_RYUK_DISABLED before docker and testcontainers load.
from tests.integration.support import REPOSITORY, BuiltImage

import docker
import docker.errors
import requests.exceptions

LOCAL_BASE_IMAGE = "repack-base:trixie-tini"
DEFAULT_TAG = "sagemaker-model-repack:test"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A client of the local Docker engine; without one, skip, or fail under CI=true."""
    try:
        client = docker.from_env()
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        reason = f"no Docker engine answers ({exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires the container tests to run", pytrace=False)
        pytest.skip(f"{reason}; start Docker to run the container tests")
    yield client
    client.close()


@pytest.fixture(scope="session")
def built_image(docker_client: docker.DockerClient) -> Iterator[BuiltImage]:
    """Build the repository's Dockerfile once per session with docker-py's classic builder.

    The build arguments match `make build`'s, so after `make build` every layer
    comes from the build cache and REPACK_IMAGE names the same image. At the
    end, the fixture fails the session if a test left a container behind.
    """
    tag = os.environ.get("REPACK_IMAGE", DEFAULT_TAG)
    build_args = {
        "BASE_IMAGE": _choose_base_image(docker_client),
        "VERSION": _project_version(),
        "REVISION": _git_output("rev-parse", "HEAD"),
        "SOURCE": _git_output("config", "--get", "remote.origin.url"),
    }
    try:
        image, _ = docker_client.images.build(path=str(REPOSITORY), tag=tag, buildargs=build_args,
                                              platform="linux/amd64", rm=True, forcerm=True)
    except docker.errors.BuildError as exc:
        log = "".join(str(entry.get("stream", entry.get("error", ""))) for entry in exc.build_log)
        pytest.fail(f"docker build failed: {exc.msg}\n{log}", pytrace=False)

    yield BuiltImage(image.id, tag, build_args)

    leftovers = docker_client.containers.list(all=True, filters={"ancestor": image.id})
    for container in leftovers:
        container.remove(force=True)
    assert not leftovers, f"the tests left containers behind: {[c.name for c in leftovers]}"


@pytest.fixture(scope="session")
def image(built_image: BuiltImage) -> str:
    """The id of the image under test."""
    return built_image.id


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """The host folder that tests mount read-write as /opt/ml/processing/output."""
    path = tmp_path / "output"
    path.mkdir()
    return path


@pytest.fixture
def failure_dir(tmp_path: Path) -> Path:
    """The host folder that tests mount read-write as /opt/ml/output, for the failure message."""
    path = tmp_path / "failure"
    path.mkdir()
    return path


def _choose_base_image(client: docker.DockerClient) -> str:
    """Return BASE_IMAGE if set, else the Dockerfile's default or the local base, if present."""
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    dockerfile = (REPOSITORY / "Dockerfile").read_text()
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE).group(1)
    for candidate in (default, LOCAL_BASE_IMAGE):
        try:
            client.images.get(candidate)
            return candidate
        except docker.errors.ImageNotFound:
            continue
    pytest.fail(f"neither {default} nor {LOCAL_BASE_IMAGE} is available; "
                "run `make base-image` or set BASE_IMAGE", pytrace=False)


def _project_version() -> str:
    with (REPOSITORY / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)["project"]["version"]


def _git_output(*arguments: str) -> str:
    """Return git's output for `arguments`, or "unknown" as the Makefile does."""
    result = subprocess.run(["git", *arguments], cwd=REPOSITORY,
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"
