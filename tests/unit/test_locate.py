"""The search order for the inputs, and the errors when nothing is found."""

import pytest

from app import main
from tests import archives


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def run_in(tmp_path, capsys):
    code = main(["--code-dir", str(tmp_path / "code"),
                 "--processing-dir", str(tmp_path / "processing"),
                 "--failure-message", str(tmp_path / "message")])
    return code, capsys.readouterr().err


def model_with(tag: bytes) -> bytes:
    return archives.gzip_bytes(archives.tar_bytes([archives.file("tag.txt", tag)]))


def output_tag(tmp_path) -> bytes:
    import tarfile
    with tarfile.open(tmp_path / "processing/output/model/model.tar.gz") as archive:
        return archive.extractfile("tag.txt").read()


def test_model_search_order(tmp_path, capsys):
    locations = ["code/models/model.tar.gz", "code/model.tar.gz",
                 "processing/input/model/model.tar.gz"]
    write(tmp_path / "code/hyperparameters.json", b"{}")
    for location in reversed(locations):
        write(tmp_path / location, model_with(location.encode()))

        code, log = run_in(tmp_path, capsys)

        assert code == 0, log
        assert output_tag(tmp_path) == location.encode()
        assert f"Found model: {tmp_path / location}" in log


def test_hyperparameters_search_order(tmp_path, capsys):
    import tarfile
    locations = ["code/hyperparams/hyperparameters.json", "code/hyperparameters.json",
                 "processing/input/config/hyperparameters.json"]
    write(tmp_path / "code/model.tar.gz", model_with(b"m"))
    for location in reversed(locations):
        write(tmp_path / location, b'{"from": "%s"}' % location.encode())

        code, log = run_in(tmp_path, capsys)

        assert code == 0, log
        with tarfile.open(tmp_path / "processing/output/model/model.tar.gz") as archive:
            assert location.encode() in archive.extractfile("hyperparameters.json").read()


@pytest.mark.parametrize("present, code, searched", [
    ("code/hyperparameters.json", "MODEL_NOT_FOUND",
     ["code/models/model.tar.gz", "code/model.tar.gz", "processing/input/model/model.tar.gz"]),
    ("code/model.tar.gz", "HYPERPARAMETERS_NOT_FOUND",
     ["code/hyperparams/hyperparameters.json", "code/hyperparameters.json",
      "processing/input/config/hyperparameters.json"]),
])
def test_missing_input_lists_every_location(tmp_path, capsys, present, code, searched):
    write(tmp_path / present, model_with(b"m") if present.endswith(".tar.gz") else b"{}")

    exit_code, log = run_in(tmp_path, capsys)

    message = (tmp_path / "message").read_text()
    assert exit_code == 1
    assert message.startswith(f"{code}: ")
    for location in searched:
        assert str(tmp_path / location) in message
    assert not (tmp_path / "processing/output/model").exists()
