import dataclasses
import os
import tarfile
from pathlib import Path

import pytest

from app import main
from tests import archives


@dataclasses.dataclass
class Outcome:
    """What one run of the job left behind."""

    exit_code: int
    log: str
    output_dir: Path
    failure_message: Path

    @property
    def output(self) -> Path:
        return self.output_dir / "model.tar.gz"

    def leftovers(self) -> list[str]:
        """Names in the output folder other than model.tar.gz (temporary files, say)."""
        if not self.output_dir.exists():
            return []
        return sorted(p.name for p in self.output_dir.iterdir() if p.name != "model.tar.gz")

    def message(self) -> str:
        return self.failure_message.read_text(encoding="utf-8")


class Job:
    """Runs the job in-process against files in a temporary folder."""

    def __init__(self, root: Path, capsys: pytest.CaptureFixture) -> None:
        self.root = root
        self.capsys = capsys
        self.model = root / "in" / "model.tar.gz"
        self.hyperparameters = root / "in" / "hyperparameters.json"
        self.output_dir = root / "out"
        self.failure_message = root / "message"
        self.model.parent.mkdir()

    def run(self, model: bytes | None = None, hyperparameters: bytes = b'{"epochs": "3"}',
            *extra: str) -> Outcome:
        if model is not None:
            self.model.write_bytes(model)
        self.hyperparameters.write_bytes(hyperparameters)
        # The new member's mtime comes from this file; fixed, so reruns are comparable.
        os.utime(self.hyperparameters, (1_700_000_000, 1_700_000_000))
        self.capsys.readouterr()
        code = main(["--model", str(self.model), "--hyperparameters", str(self.hyperparameters),
                     "--output-dir", str(self.output_dir),
                     "--failure-message", str(self.failure_message), *extra])
        return Outcome(code, self.capsys.readouterr().err, self.output_dir, self.failure_message)


@pytest.fixture
def job(tmp_path: Path, capsys: pytest.CaptureFixture) -> Job:
    return Job(tmp_path, capsys)


def assert_repacked(original_tar: bytes, output: Path, hyperparameters: bytes) -> None:
    """Check the output: every kept member byte-identical, one new hyperparameters.json last."""
    kept = [(info, raw) for info, raw in archives.raw_members(original_tar)
            if not archives.is_root_hyperparameters(info)]
    written = archives.raw_members(archives.decompress(output.read_bytes()))

    assert len(written) == len(kept) + 1
    for (want_info, want_raw), (got_info, got_raw) in zip(kept, written):
        assert got_info.name == want_info.name
        assert got_raw == want_raw, f"member {want_info.name} changed"
    new_info = written[-1][0]
    assert new_info.name == archives.HYPERPARAMETERS
    assert new_info.isreg()
    assert new_info.mode == 0o644
    assert (new_info.uid, new_info.gid) == (0, 0)
    with tarfile.open(output) as archive:
        hyperparameter_members = [m for m in archive.getmembers()
                                  if archives.is_root_hyperparameters(m)]
        assert len(hyperparameter_members) == 1
        assert archive.extractfile(hyperparameter_members[0]).read() == hyperparameters
