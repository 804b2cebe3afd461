"""Archives that are valid but probably not what the user meant: the job warns and succeeds."""

import tarfile

import pytest

from tests import archives
from tests.archives import file, folder
from tests.unit.conftest import assert_repacked


def run_warned(job, members):
    tar = archives.tar_bytes(members, tarfile.PAX_FORMAT)
    outcome = job.run(archives.gzip_bytes(tar), b"{}")
    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, b"{}")
    return [line for line in outcome.log.splitlines() if line.startswith("WARNING ")]


def test_layout_warns_about_single_top_level_folder(job):
    warnings = run_warned(job, [folder("llama"), file("llama/config.json", b"{}"),
                                file("llama/model.bin", b"w")])
    assert len(warnings) == 1
    assert "under the folder llama/" in warnings[0]
    assert "tar czf model.tar.gz -C llama ." in warnings[0]


def test_layout_accepts_files_at_root_without_warning(job):
    assert run_warned(job, archives.model_members()) == []


@pytest.mark.parametrize("members, fragment", [
    ([file("config.json", b"{}"), file("._config.json", b"mac"),
      file("__MACOSX/._x", b"mac")], "2 member(s) of model.tar.gz are macOS metadata"),
    ([file("inner.tar.gz", b"\x1f\x8b")], "single file, inner.tar.gz, which is itself an archive"),
    ([file("secret.bin", b"w", mode=0o600), file("ok.bin", b"w")],
     "1 member(s) of model.tar.gz are readable only by their owner, first secret.bin"),
    ([file("run.sh", b"#!", mode=0o4755), file("ok.bin", b"w")], "setuid or setgid"),
    ([file("weights\\part1.bin", b"w"), file("ok.bin", b"w")], "backslashes"),
])
def test_layout_warns_and_keeps_member(job, members, fragment):
    warnings = run_warned(job, members)
    assert any(fragment in warning for warning in warnings), warnings


def test_non_utf8_name_kept_and_escaped(job):
    name = b"caf\xe9.bin".decode("utf-8", "surrogateescape")
    members = [file(name, b"latin-1 name"), file("ok.bin", b"w")]
    buffer = __import__("io").BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as archive:
        for member in members:
            archive.addfile(member.info, __import__("io").BytesIO(member.data))
    tar = buffer.getvalue()

    outcome = job.run(archives.gzip_bytes(tar), b"{}")

    assert outcome.exit_code == 0, outcome.log
    assert_repacked(tar, outcome.output, b"{}")
    assert "Member caf\\xe9.bin" in outcome.log
