"""The image as a Processing job of the SageMaker Python SDK's local mode.

Local mode runs the job's container with docker compose, the way SageMaker
does: the inputs mounted at their LocalPath, /opt/ml/config/processingjobconfig.json
and resourceconfig.json written for the job, and the output folder copied to
the output's URI at the end. The tests send the CreateProcessingJob request
that a boto3 user sends, with file:// URIs, to the SDK's local client, so no
AWS call is made.

`Processor.run()` of the SDK cannot run offline: it uploads every input whose
URI is not s3:// to the session's default bucket, and finding that bucket
calls STS GetCallerIdentity. The tests therefore call the client directly.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from tests.integration.support import (BuiltImage, assert_repacked, write_hyperparameters,
                                       write_model)

local_session = pytest.importorskip("sagemaker.core.local.local_session",
                                    reason="the SageMaker Python SDK (sagemaker-core) is missing")

pytestmark = pytest.mark.container

# The name docker compose gives the network of every local-mode job.
LOCAL_NETWORK = "sagemaker-local"
# A closed port on loopback. Every HTTP request of the SDK goes to this proxy
# and fails at once, so a test cannot reach AWS by mistake.
DEAD_PROXY = "http://127.0.0.1:9"
# The SDK reads its defaults from this file. It turns off its telemetry request.
SDK_CONFIG = """SchemaVersion: '1.0'
SageMaker:
  PythonSDK:
    Modules:
      TelemetryOptOut: true
"""


@pytest.fixture
def offline_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the SDK a dummy region and credentials, and no way to reach AWS."""
    config = tmp_path / "sagemaker-config.yaml"
    config.write_text(SDK_CONFIG)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "dummy-secret-for-local-mode",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "HTTP_PROXY": DEAD_PROXY,
        "HTTPS_PROXY": DEAD_PROXY,
        "NO_PROXY": "localhost,127.0.0.1",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "SAGEMAKER_ADMIN_CONFIG_OVERRIDE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def local_client(offline_aws: None, tmp_path: Path, built_image: BuiltImage,
                 docker_client: docker.DockerClient) -> Iterator:
    """Yield the SDK's local SageMaker client, and remove the containers and network its jobs create."""
    if not _has_compose():
        reason = "neither `docker compose` nor `docker-compose` is installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires the local-mode tests to run", pytrace=False)
        pytest.skip(reason)

    network_existed = bool(docker_client.networks.list(names=[LOCAL_NETWORK]))
    container_root = tmp_path / "local-mode"
    container_root.mkdir()

    session = local_session.LocalSession()
    session.config = {"local": {"local_code": False, "container_root": str(container_root)}}
    yield session.sagemaker_client

    # docker compose labels each container with the folder of its compose
    # file, which local mode creates under container_root.
    for container in docker_client.containers.list(all=True, filters={"ancestor": built_image.id}):
        working_dir = container.labels.get("com.docker.compose.project.working_dir", "")
        if working_dir.startswith(f"{container_root}{os.sep}"):
            container.remove(force=True)
    if not network_existed:
        for network in docker_client.networks.list(names=[LOCAL_NETWORK]):
            with contextlib.suppress(docker.errors.APIError):  # still in use by another job
                network.remove()


def _has_compose() -> bool:
    from sagemaker.core.local.image import _SageMakerContainer

    try:
        _SageMakerContainer._get_compose_cmd_prefix()
    except ImportError:
        return False
    return True


def _processing_request(job_name: str, image: str, folder: Path, arguments: list[str]) -> dict:
    """Return a CreateProcessingJob request that reads folder/model and folder/config."""
    def file_input(name: str) -> dict:
        return {"InputName": name, "S3Input": {
            "S3Uri": (folder / name).as_uri(), "LocalPath": f"/opt/ml/processing/input/{name}",
            "S3DataType": "S3Prefix", "S3InputMode": "File"}}

    return {
        "ProcessingJobName": job_name,
        "RoleArn": "arn:aws:iam::123456789012:role/local-mode-ignores-this",
        # NOTE: local mode (sagemaker-core 2.27.0) raises KeyError: 'entrypoint'
        # for ContainerArguments without a ContainerEntrypoint, which SageMaker
        # itself accepts, so the request repeats the image's entry point.
        "AppSpecification": {"ImageUri": image,
                             "ContainerEntrypoint": ["tini", "--", "python3",
                                                                     "/opt/repack/entrypoint.py"],
                             "ContainerArguments": arguments},
        "ProcessingInputs": [file_input("model"), file_input("config")],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "model", "S3Output": {
            "S3Uri": (folder / "output").as_uri(), "LocalPath": "/opt/ml/processing/output/model",
            "S3UploadMode": "EndOfJob"}}]},
        "ProcessingResources": {"ClusterConfig": {
            "InstanceCount": 1, "InstanceType": "local", "VolumeSizeInGB": 30}},
    }


def test_local_processing_job_repacks_model(local_client, built_image: BuiltImage, tmp_path: Path):
    model = write_model(tmp_path / "job" / "model" / "model.tar.gz", seed="local-mode")
    hyperparameters = write_hyperparameters(tmp_path / "job" / "config" / "hyperparameters.json")
    (tmp_path / "job" / "output").mkdir()

    local_client.create_processing_job(**_processing_request(
        "repack-local-success", built_image.tag, tmp_path / "job", ["--compression-level", "1"]))

    description = local_client.describe_processing_job("repack-local-success")
    assert description["ProcessingJobStatus"] == "Completed"
    assert description["AppSpecification"]["ContainerArguments"] == ["--compression-level", "1"]
    assert_repacked(tmp_path / "job" / "output" / "model.tar.gz", model, hyperparameters)
    assert sorted(path.name for path in (tmp_path / "job" / "output").iterdir()) == ["model.tar.gz"]


def test_local_processing_job_fails_without_hyperparameters(local_client, built_image: BuiltImage,
                                                            tmp_path: Path,
                                                            capfd: pytest.CaptureFixture):
    write_model(tmp_path / "job" / "model" / "model.tar.gz")
    (tmp_path / "job" / "config").mkdir()
    (tmp_path / "job" / "output").mkdir()

    with pytest.raises(RuntimeError, match="Process exited with code: 1"):
        local_client.create_processing_job(**_processing_request(
            "repack-local-failure", built_image.tag, tmp_path / "job", []))

    assert list((tmp_path / "job" / "output").iterdir()) == []
    assert "ERROR HYPERPARAMETERS_NOT_FOUND: " in capfd.readouterr().out
