"""The image itself: metadata, size, command line, and the example that `make run` repacks."""

from pathlib import Path

import docker
import pytest

from tests.integration.support import (CODE_DIR, OUTPUT_DIR, REPOSITORY, BuiltImage, Job,
                                       assert_repacked, assert_success_logged,
                                       write_hyperparameters, write_model)

pytestmark = pytest.mark.container

# The app is about 100 KB of Python files, copied twice.
MAX_GROWTH_OVER_BASE = 5_000_000


def test_image_labels_name_version_and_revision(built_image: BuiltImage,
                                                docker_client: docker.DockerClient):
    labels = docker_client.images.get(built_image.id).labels

    assert labels["org.opencontainers.image.version"] == built_image.build_args["VERSION"]
    assert labels["org.opencontainers.image.revision"] == built_image.build_args["REVISION"]
    assert labels["org.opencontainers.image.source"] == built_image.build_args["SOURCE"]


def test_image_config_for_sagemaker(built_image: BuiltImage, docker_client: docker.DockerClient):
    attrs = docker_client.images.get(built_image.id).attrs
    config = attrs["Config"]

    assert attrs["Architecture"] == "amd64"
    assert config["Entrypoint"] == ["tini", "--", "python3", "/opt/repack/entrypoint.py"]
    assert config["User"] in ("", "root", "0")
    assert "PYTHONUNBUFFERED=1" in config["Env"]
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    assert config.get("Healthcheck") is None


def test_image_size_close_to_base(built_image: BuiltImage, docker_client: docker.DockerClient):
    size = docker_client.images.get(built_image.id).attrs["Size"]
    base_size = docker_client.images.get(built_image.build_args["BASE_IMAGE"]).attrs["Size"]

    assert size - base_size < MAX_GROWTH_OVER_BASE, (size, base_size)


def test_image_runs_python_3_13(image: str):
    result = Job(image, entrypoint=["python3", "--version"]).run()

    assert result.exit_code == 0
    assert (result.stdout + result.stderr).startswith("Python 3.13.")


def test_image_bakes_app_into_code_dir(image: str):
    listing = Job(image, entrypoint=["python3", "-c",
                                     "import os; print(sorted(os.listdir('/opt/ml/code')))"]).run()

    assert listing.exit_code == 0
    assert listing.stdout.strip() == "['app', 'entrypoint.py']"


def test_help_lists_search_order(image: str):
    result = Job(image, arguments=["--help"]).run()

    assert result.exit_code == 0
    for location in ("<code-dir>/models/model.tar.gz", "<code-dir>/model.tar.gz",
                     "<processing-dir>/input/model/model.tar.gz",
                     "<code-dir>/hyperparams/hyperparameters.json"):
        assert location in result.stdout


def test_container_arguments_reach_engine(image: str, tmp_path: Path, output_dir: Path):
    model = write_model(tmp_path / "models" / "model.tar.gz")
    hyperparameters = write_hyperparameters(tmp_path / "hyperparams" / "hyperparameters.json")

    result = (Job(image, arguments=["--recompress", "--compression-level", "1", "--threads", "1"])
              .mount(model.parent, f"{CODE_DIR}/models")
              .mount(tmp_path / "hyperparams", f"{CODE_DIR}/hyperparams")
              .mount(output_dir, OUTPUT_DIR, "rw")
              .run())

    assert_success_logged(result, output_dir / "model" / "model.tar.gz")
    assert_repacked(output_dir / "model" / "model.tar.gz", model, hyperparameters)


def test_container_rejects_invalid_argument(image: str):
    result = Job(image, arguments=["--compression-level", "12"]).run()

    assert result.exit_code != 0
    assert "12 is not a compression level from 1 to 9" in result.stderr


def test_example_repacks_like_make_run(image: str, tmp_path: Path, output_dir: Path):
    example = REPOSITORY / "tests" / "example"
    hyperparameters = (example / "hyperparams" / "hyperparameters.json").read_bytes()

    result = (Job(image)
              .mount(example / "models", f"{CODE_DIR}/models")
              .mount(example / "hyperparams", f"{CODE_DIR}/hyperparams")
              .mount(output_dir, OUTPUT_DIR, "rw")
              .run())

    output = output_dir / "model" / "model.tar.gz"
    assert_success_logged(result, output)
    assert_repacked(output, example / "models" / "model.tar.gz", hyperparameters)
