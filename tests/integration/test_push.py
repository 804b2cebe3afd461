"""`make push`: the tags, the ECR login decision, and a real push to a registry on loopback.

The first tests run the Makefile in a scratch git repository with stand-ins for
`docker` and `aws` on PATH that record their arguments, so they need neither
Docker nor AWS. The last one pushes the built image to Debian's
`docker-registry` on 127.0.0.1 and reads the pushed manifest back.
"""

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.integration.push_registry import (ANY_MANIFEST, SCHEMA2_CONFIG, SCHEMA2_LAYER,
                                             SCHEMA2_MANIFEST, run_registry)
from tests.integration.support import REPOSITORY, BuiltImage

ECR_HOST = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
PUSH_NAME = "sagemaker-model-repack"
# Variables that would reach the Makefile from the caller's environment or
# from an outer `make test`, and change what push does.
MAKE_VARIABLES = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "REGISTRY", "REPOSITORY", "TAG", "LOGIN",
                  "IMAGE", "BASE_IMAGE", "VERSION")
# A `make push` to the local registry builds from the cache and pushes about
# 100 MB. It took about 5 s on a 2-core machine, so this limit is generous.
PUSH_TIMEOUT = 240

# Each stand-in appends one JSON line, its name and arguments, to $TOOL_LOG.
# `docker login` also records what it read on stdin. `aws` prints a fixed
# password, or fails when FAKE_AWS_FAILS is set.
FAKE_TOOL = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
entry = {"argv": [name] + sys.argv[1:]}
if sys.argv[1:2] == ["login"]:
    entry["stdin"] = sys.stdin.read()
with open(os.environ["TOOL_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
if name == "aws":
    if os.environ.get("FAKE_AWS_FAILS"):
        sys.exit("Unable to locate credentials.")
    print("fake-password")
"""


def _make_environment(**extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in MAKE_VARIABLES}
    environment.update(extra)
    return environment


def _git(repository: Path, *arguments: str) -> str:
    result = subprocess.run(["git", "-C", str(repository), "-c", "user.name=Test",
                             "-c", "user.email=test@example.com", *arguments],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip()


# --- The Makefile's logic, with stand-in tools -------------------------------------------------

class FakeTools:
    """A scratch git repository with the project's Makefile, and recording stand-in tools."""

    def __init__(self, root: Path):
        self.repository = root / "repository"
        self.bin = root / "bin"
        self.log = root / "tools.jsonl"

        self.repository.mkdir()
        for name in ("Makefile", "pyproject.toml", "Dockerfile"):
            shutil.copy(REPOSITORY / name, self.repository / name)
        _git(self.repository, "init", "--quiet")
        _git(self.repository, "add", ".")
        _git(self.repository, "commit", "--quiet", "-m", "Scratch commit")
        self.commit = _git(self.repository, "rev-parse", "HEAD")
        self.version = tomllib.loads((self.repository / "pyproject.toml").read_text())[
            "project"]["version"]

        self.bin.mkdir()
        for name in ("docker", "aws"):
            tool = self.bin / name
            tool.write_text(FAKE_TOOL.replace("{python}", sys.executable, 1))
            tool.chmod(tool.stat().st_mode | stat.S_IXUSR)

    def make_push(self, *variables: str, **environment: str) -> subprocess.CompletedProcess:
        path = f"{self.bin}{os.pathsep}{os.environ['PATH']}"
        return subprocess.run(["make", "--no-print-directory", "push", *variables],
                              cwd=self.repository, capture_output=True, text=True, timeout=60,
                              env=_make_environment(PATH=path, TOOL_LOG=str(self.log),
                                                    **environment))

    def calls(self, tool: str, command: str | None = None) -> list[dict]:
        """Return the recorded calls of `tool`, or only those of its subcommand `command`."""
        if not self.log.exists():
            return []
        entries = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [entry for entry in entries if entry["argv"][0] == tool
                and (command is None or entry["argv"][1:2] == [command])]

    def pushed(self) -> list[str]:
        return [entry["argv"][2] for entry in self.calls("docker", "push")]


@pytest.fixture
def fake_tools(tmp_path: Path) -> FakeTools:
    return FakeTools(tmp_path)


def test_push_to_ecr_logs_in_with_aws_cli(fake_tools: FakeTools):
    result = fake_tools.make_push(f"REGISTRY={ECR_HOST}")

    assert result.returncode == 0, result.stdout + result.stderr
    assert [call["argv"] for call in fake_tools.calls("aws")] == [
        ["aws", "ecr", "get-login-password", "--region", "eu-west-1"]]
    logins = fake_tools.calls("docker", "login")
    assert [call["argv"] for call in logins] == [
        ["docker", "login", "--username", "AWS", "--password-stdin", ECR_HOST]]
    assert logins[0]["stdin"] == "fake-password"
    assert fake_tools.pushed() == [f"{ECR_HOST}/{PUSH_NAME}:{fake_tools.commit}"]


def test_push_tags_commit_and_version_on_release_tag(fake_tools: FakeTools):
    _git(fake_tools.repository, "tag", f"v{fake_tools.version}")

    result = fake_tools.make_push(f"REGISTRY={ECR_HOST}/team")

    assert result.returncode == 0, result.stdout + result.stderr
    image = f"{ECR_HOST}/team/{PUSH_NAME}"
    assert fake_tools.pushed() == [f"{image}:{fake_tools.commit}", f"{image}:{fake_tools.version}"]
    tags = [call["argv"][2:] for call in fake_tools.calls("docker", "tag")]
    assert tags == [[f"{PUSH_NAME}:{fake_tools.version}", f"{image}:{fake_tools.commit}"],
                    [f"{PUSH_NAME}:{fake_tools.version}", f"{image}:{fake_tools.version}"]]


def test_push_ignores_tags_that_are_not_versions(fake_tools: FakeTools):
    _git(fake_tools.repository, "tag", "v1.2")
    _git(fake_tools.repository, "tag", "nightly")

    result = fake_tools.make_push("REGISTRY=127.0.0.1:5000", "TAG=candidate")

    assert result.returncode == 0, result.stdout + result.stderr
    assert fake_tools.pushed() == [f"127.0.0.1:5000/{PUSH_NAME}:candidate"]


def test_push_rejects_release_tag_other_than_version(fake_tools: FakeTools):
    _git(fake_tools.repository, "tag", "v99.0.0")

    result = fake_tools.make_push(f"REGISTRY={ECR_HOST}")

    assert result.returncode != 0
    assert (f"HEAD is tagged v99.0.0 but pyproject.toml has version {fake_tools.version}"
            in result.stderr)
    assert fake_tools.pushed() == []


def test_push_skips_login_when_login_empty(fake_tools: FakeTools):
    result = fake_tools.make_push(f"REGISTRY={ECR_HOST}", "LOGIN=")

    assert result.returncode == 0, result.stdout + result.stderr
    assert fake_tools.calls("aws") == []
    assert fake_tools.calls("docker", "login") == []
    assert fake_tools.pushed() == [f"{ECR_HOST}/{PUSH_NAME}:{fake_tools.commit}"]


@pytest.mark.parametrize("registry", ["127.0.0.1:5000", "registry.example.com/ml",
                                      "dkr.ecr.eu-west-1.amazonaws.com.example.com"])
def test_push_skips_login_for_other_registries(fake_tools: FakeTools, registry: str):
    result = fake_tools.make_push(f"REGISTRY={registry}")

    assert result.returncode == 0, result.stdout + result.stderr
    assert fake_tools.calls("aws") == []
    assert fake_tools.calls("docker", "login") == []
    assert fake_tools.pushed() == [f"{registry}/{PUSH_NAME}:{fake_tools.commit}"]


def test_push_stops_when_aws_login_fails(fake_tools: FakeTools):
    result = fake_tools.make_push(f"REGISTRY={ECR_HOST}", FAKE_AWS_FAILS="1")

    assert result.returncode != 0
    assert "Unable to locate credentials." in result.stderr
    assert fake_tools.calls("docker", "login") == []
    assert fake_tools.pushed() == []


def test_push_without_registry_fails_with_example(fake_tools: FakeTools):
    result = fake_tools.make_push()

    assert result.returncode != 0
    assert "make push: set REGISTRY, for example REGISTRY=" in result.stderr
    assert fake_tools.pushed() == []


# --- A real push to a registry on loopback -----------------------------------------------------

@pytest.fixture
def pushed_references(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Collect the image references a test adds to the local engine, and remove them at the end."""
    references: list[str] = []
    yield references
    for reference in references:
        try:
            docker_client.images.remove(reference)
        except docker.errors.ImageNotFound:
            pass


@pytest.mark.container
def test_push_sends_schema2_manifest_to_registry(built_image: BuiltImage,
                                                 docker_client: docker.DockerClient,
                                                 pushed_references: list[str], tmp_path: Path):
    commit = _git(REPOSITORY, "rev-parse", "HEAD")

    with run_registry(tmp_path) as registry:
        image_name = f"{registry.address}/{PUSH_NAME}"
        pushed_references.append(f"{image_name}:{commit}")
        result = subprocess.run(
            ["make", "--no-print-directory", "push", f"REGISTRY={registry.address}", "LOGIN=",
             f"IMAGE={built_image.tag}", f"BASE_IMAGE={built_image.build_args['BASE_IMAGE']}"],
            cwd=REPOSITORY, env=_make_environment(), capture_output=True, text=True,
            timeout=PUSH_TIMEOUT)
        assert result.returncode == 0, result.stdout + result.stderr

        tags, _ = registry.get(f"/v2/{PUSH_NAME}/tags/list")
        assert json.loads(tags)["tags"] == [commit]

        manifest_bytes, headers = registry.get(f"/v2/{PUSH_NAME}/manifests/{commit}",
                                               accept=ANY_MANIFEST)
        manifest = json.loads(manifest_bytes)
        digest = headers["Docker-Content-Digest"]
        assert headers["Content-Type"] == SCHEMA2_MANIFEST
        assert manifest["mediaType"] == SCHEMA2_MANIFEST
        assert manifest["schemaVersion"] == 2
        assert digest == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        assert manifest["config"]["mediaType"] == SCHEMA2_CONFIG
        assert {layer["mediaType"] for layer in manifest["layers"]} == {SCHEMA2_LAYER}

        config_bytes, _ = registry.get(f"/v2/{PUSH_NAME}/blobs/{manifest['config']['digest']}")
        config = json.loads(config_bytes)
        assert (config["os"], config["architecture"]) == ("linux", "amd64")

        by_digest = f"{image_name}@{digest}"
        pushed_references.append(by_digest)
        pulled = docker_client.images.pull(by_digest)
        local = docker_client.images.get(built_image.tag)
        assert pulled.id == local.id
        assert by_digest in pulled.attrs["RepoDigests"]
