"""Where the job finds its inputs: the mounts users and SageMaker make, and their precedence."""

from pathlib import Path

import pytest

from tests.integration.support import (CODE_DIR, OUTPUT_DIR, PROCESSING_DIR, Job, assert_failed,
                                       assert_repacked, assert_success_logged,
                                       write_hyperparameters, write_model)

pytestmark = pytest.mark.container

# Each location: how a user mounts it, as (host path, container path) with the
# host path relative to the test's folder, and the file's path in the container.
# "subfolder" mounts folders under /opt/ml/code, "root" mounts single files at
# the root of /opt/ml/code, and "processing" mounts SageMaker Processing inputs.
MODEL_LOCATIONS = {
    "subfolder": ("models", f"{CODE_DIR}/models", f"{CODE_DIR}/models/model.tar.gz"),
    "root": ("root/model.tar.gz", f"{CODE_DIR}/model.tar.gz", f"{CODE_DIR}/model.tar.gz"),
    "processing": ("input/model", f"{PROCESSING_DIR}/input/model",
                   f"{PROCESSING_DIR}/input/model/model.tar.gz"),
}
HYPERPARAMETERS_LOCATIONS = {
    "subfolder": ("hyperparams", f"{CODE_DIR}/hyperparams",
                  f"{CODE_DIR}/hyperparams/hyperparameters.json"),
    "root": ("root/hyperparameters.json", f"{CODE_DIR}/hyperparameters.json",
             f"{CODE_DIR}/hyperparameters.json"),
    "processing": ("input/config", f"{PROCESSING_DIR}/input/config",
                   f"{PROCESSING_DIR}/input/config/hyperparameters.json"),
}


def place_model(job: Job, folder: Path, location: str) -> Path:
    """Write a model archive whose content names `location`, and mount it there."""
    host, container_path, _ = MODEL_LOCATIONS[location]
    mounted = folder / host
    archive = mounted / "model.tar.gz" if location != "root" else mounted
    write_model(archive, seed=location)
    job.mount(mounted, container_path)
    return archive


def place_hyperparameters(job: Job, folder: Path, location: str) -> bytes:
    """Write a hyperparameters.json whose content names `location`, and mount it there."""
    host, container_path, _ = HYPERPARAMETERS_LOCATIONS[location]
    mounted = folder / host
    path = mounted / "hyperparameters.json" if location != "root" else mounted
    data = write_hyperparameters(path, seed=location)
    job.mount(mounted, container_path)
    return data


def logged_info(stderr: str, path: str) -> bool:
    """Return whether an INFO line of the job's log names `path` as its last word."""
    return any(line.startswith("INFO ") and line.endswith(path) for line in stderr.splitlines())


@pytest.mark.parametrize("location", ["subfolder", "root", "processing"])
def test_inputs_found_at_location(image: str, tmp_path: Path, output_dir: Path, location: str):
    job = Job(image).mount(output_dir, OUTPUT_DIR, "rw")
    model = place_model(job, tmp_path, location)
    hyperparameters = place_hyperparameters(job, tmp_path, location)

    result = job.run()

    output = output_dir / "model" / "model.tar.gz"
    assert_success_logged(result, output)
    assert_repacked(output, model, hyperparameters)
    assert logged_info(result.stderr, MODEL_LOCATIONS[location][2])
    assert logged_info(result.stderr, HYPERPARAMETERS_LOCATIONS[location][2])


@pytest.mark.parametrize(("model_locations", "hyperparameters_locations", "model_winner",
                          "hyperparameters_winner"), [
    pytest.param(["subfolder", "root", "processing"], ["subfolder", "root", "processing"],
                 "subfolder", "subfolder", id="all-three"),
    pytest.param(["root", "processing"], ["root", "processing"], "root", "root",
                 id="root-before-processing"),
    pytest.param(["subfolder", "processing"], ["root", "processing"], "subfolder", "root",
                 id="mixed-subfolder-root"),
    pytest.param(["processing"], ["subfolder", "processing"], "processing", "subfolder",
                 id="mixed-processing-subfolder"),
])
def test_first_location_wins(image: str, tmp_path: Path, output_dir: Path,
                             model_locations: list[str], hyperparameters_locations: list[str],
                             model_winner: str, hyperparameters_winner: str):
    job = Job(image).mount(output_dir, OUTPUT_DIR, "rw")
    models = {location: place_model(job, tmp_path, location) for location in model_locations}
    hyperparameters = {location: place_hyperparameters(job, tmp_path, location)
                       for location in hyperparameters_locations}

    result = job.run()

    output = output_dir / "model" / "model.tar.gz"
    assert_success_logged(result, output)
    assert_repacked(output, models[model_winner], hyperparameters[hyperparameters_winner])
    assert logged_info(result.stderr, MODEL_LOCATIONS[model_winner][2])
    assert logged_info(result.stderr, HYPERPARAMETERS_LOCATIONS[hyperparameters_winner][2])


def test_whole_code_mount_with_root_files(image: str, tmp_path: Path, output_dir: Path):
    """A folder mounted over all of /opt/ml/code hides the baked-in copy, not the job."""
    code = tmp_path / "code"
    model = write_model(code / "model.tar.gz")
    hyperparameters = write_hyperparameters(code / "hyperparameters.json")

    result = Job(image).mount(code, CODE_DIR).mount(output_dir, OUTPUT_DIR, "rw").run()

    output = output_dir / "model" / "model.tar.gz"
    assert_success_logged(result, output)
    assert_repacked(output, model, hyperparameters)


def test_whole_code_mount_without_inputs(image: str, tmp_path: Path, output_dir: Path):
    code = tmp_path / "code"
    (code / "unrelated").mkdir(parents=True)

    result = Job(image).mount(code, CODE_DIR).mount(output_dir, OUTPUT_DIR, "rw").run()

    text = assert_failed(result, "MODEL_NOT_FOUND")
    assert "can't open file" not in result.stderr
    for _, _, path in MODEL_LOCATIONS.values():
        assert path in text
    assert list(output_dir.iterdir()) == []
