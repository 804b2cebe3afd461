"""A throwaway image registry on loopback for the `make push` tests.

The registry is Debian's `docker-registry` package, the CNCF distribution
registry. When its binary is missing, the tests install the package with
apt-get. Without apt-get, or without root, they skip with the reason, except
under CI=true, where they fail.
"""

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
REGISTRY_PACKAGE = "docker-registry"

# The registry starts in well under a second, but apt-get can take a minute on a slow mirror.
START_TIMEOUT = 30
INSTALL_TIMEOUT = 240

SCHEMA2_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA2_CONFIG = "application/vnd.docker.container.image.v1+json"
SCHEMA2_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# Every manifest type a registry may store, so that it returns the stored
# manifest unchanged instead of converting it or returning 404.
ANY_MANIFEST = ", ".join([
    SCHEMA2_MANIFEST,
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
])


@dataclasses.dataclass
class Registry:
    """A running registry: its `host:port` address and its HTTP API base URL."""

    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def get(self, path: str, accept: str | None = None) -> tuple[bytes, dict[str, str]]:
        """Return the body and headers of GET `path` on the registry's API."""
        request = urllib.request.Request(self.url + path)
        if accept:
            request.add_header("Accept", accept)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read(), dict(response.headers)


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires the push tests to run", pytrace=False)
    pytest.skip(reason)


def ensure_registry_binary() -> Path:
    """Return the registry binary, installing Debian's package with apt-get if it is missing."""
    if REGISTRY_BINARY.exists():
        return REGISTRY_BINARY
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        _fail_or_skip(f"{REGISTRY_BINARY} is missing and apt-get cannot install "
                      f"{REGISTRY_PACKAGE} here (it needs apt-get and root)")

    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"],
                    ["apt-get", "install", "--yes", "--no-install-recommends", REGISTRY_PACKAGE]):
        result = subprocess.run(command, env=environment, capture_output=True, text=True,
                                timeout=INSTALL_TIMEOUT, check=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed with exit code {result.returncode}:\n"
                        f"{result.stdout[-2000:]}{result.stderr[-2000:]}", pytrace=False)
    if not REGISTRY_BINARY.exists():
        pytest.fail(f"the {REGISTRY_PACKAGE} package did not install {REGISTRY_BINARY}",
                    pytrace=False)
    return REGISTRY_BINARY


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _write_config(folder: Path, address: str) -> Path:
    """Write a registry config that stores images under `folder` and listens on `address`."""
    storage = folder / "storage"
    storage.mkdir()
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n"
        "  level: warn\n"
        "  accesslog:\n"
        "    disabled: true\n"
        "storage:\n"
        "  filesystem:\n"
        f"    rootdirectory: {storage}\n"
        "http:\n"
        f"  addr: {address}\n"
    )
    return config


def _is_ready(registry: Registry) -> bool:
    try:
        body, _ = registry.get("/v2/")
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    return body.strip() == b"{}"


@contextlib.contextmanager
def run_registry(folder: Path) -> Iterator[Registry]:
    """Start a registry on a free loopback port with storage in `folder`, and stop it on exit."""
    binary = ensure_registry_binary()
    registry = Registry(f"127.0.0.1:{_free_port()}")
    config = _write_config(folder, registry.address)
    log_path = folder / "registry.log"

    with log_path.open("wb") as log:
        process = subprocess.Popen([str(binary), "serve", str(config)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _is_ready(registry):
            if process.poll() is not None:
                pytest.fail(f"the registry exited with code {process.returncode}:\n"
                            f"{log_path.read_text(errors='replace')}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"the registry did not respond on {registry.url}/v2/ within "
                            f"{START_TIMEOUT} s:\n{log_path.read_text(errors='replace')}",
                            pytrace=False)
            time.sleep(0.05)
        yield registry
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
