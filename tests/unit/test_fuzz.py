"""A short fuzz run: mutated and generated inputs must end in a valid output or a known error.

The property and the seed archives live in tests/fuzz/harness.py; the long
campaign in tests/fuzz/campaign.py runs the same check on a million inputs.
Hypothesis runs derandomized and without its example database, so CI tries the
same inputs on every run.
"""

import io
import json
import random
import tarfile

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tests import archives
from tests.archives import file, folder, hardlink, symlink
from tests.fuzz import harness

SEEDS = harness.build_seeds()
# Small inputs run in 5-20 ms; the limit only catches runs that hang or spin.
TIME_LIMIT = 10.0
FUZZ_SETTINGS = settings(derandomize=True, database=None, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> harness.Workspace:
    return harness.Workspace(tmp_path_factory.mktemp("fuzz"))


def run_and_check(workspace: harness.Workspace, model: bytes, hyperparameters: bytes,
                  recompress: bool = False, label: str = "") -> None:
    """Run the job; on a violation, fail with the job's log so the cause is in the report."""
    run = workspace.run(model, hyperparameters, recompress)
    try:
        harness.check(workspace, model, hyperparameters, run, TIME_LIMIT)
    except harness.PropertyViolation as violation:
        log_tail = "\n".join(run.log.splitlines()[-15:])
        raise AssertionError(f"{label}{violation}\n--- end of the job's log ---\n"
                             f"{log_tail}") from None


# --- Strategies -------------------------------------------------------------

TAR_MUTATION = st.tuples(st.integers(0, 1 << 16), st.sampled_from(harness.TAR_HEADER_FIELDS),
                         st.binary(min_size=1, max_size=12), st.booleans())
BYTE_MUTATION = st.tuples(
    st.sampled_from(["flip", "overwrite", "truncate", "insert", "delete", "gzip-header",
                     "gzip-trailer", "append", "splice"]),
    st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16), st.integers(0, len(SEEDS) - 1))


def apply_tar_mutation(tar: bytes, mutation: tuple) -> bytes:
    """Overwrite one header field of one block, optionally fixing the block's checksum."""
    block_number, (offset, length), patch, fix_checksum = mutation
    start = block_number % (len(tar) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    mutated = harness.replace_bytes(tar, start + offset, patch[:length])
    return harness.fix_checksum(mutated, start) if fix_checksum else mutated


def apply_byte_mutation(data: bytes, mutation: tuple) -> bytes:
    kind, position, payload, other = mutation
    at = position % (len(data) + 1)
    if kind == "flip" and data:
        at %= len(data)
        return harness.replace_bytes(data, at, bytes([data[at] ^ (1 << payload[0] % 8)]))
    if kind == "overwrite":
        return harness.replace_bytes(data, at, payload)
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + payload + data[at:]
    if kind == "delete":
        return data[:at] + data[at + len(payload):]
    if kind == "gzip-header":
        return harness.replace_bytes(data, position % 10, payload[:1])
    if kind == "gzip-trailer":
        return harness.replace_bytes(data, max(len(data) - 1 - position % 8, 0), payload[:1])
    if kind == "append":
        return data + payload
    if kind == "splice":
        second = SEEDS[other].model
        return data[:at] + second[position % (len(second) + 1):]
    return data


@st.composite
def mutated_models(draw: st.DrawFn) -> bytes:
    """A seed archive with mutations in its tar stream (recompressed), its bytes, or both."""
    seed = draw(st.sampled_from(SEEDS))
    tar = seed.tar
    for mutation in draw(st.lists(TAR_MUTATION, max_size=2)):
        tar = apply_tar_mutation(tar, mutation)
    data = seed.model if tar is seed.tar else harness.compress(tar, seed.compression)
    for mutation in draw(st.lists(BYTE_MUTATION, min_size=0 if tar is not seed.tar else 1,
                                  max_size=3)):
        data = apply_byte_mutation(data, mutation)
    return data


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children,
                                                                       max_size=3),
    max_leaves=8)

HYPERPARAMETERS = st.one_of(
    st.sampled_from(harness.HYPERPARAMETER_SEEDS),
    st.dictionaries(st.text(max_size=20), JSON_VALUES, max_size=4).map(
        lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
    st.tuples(st.sampled_from(harness.HYPERPARAMETER_SEEDS), st.lists(BYTE_MUTATION, min_size=1,
                                                                      max_size=2)).map(
        lambda pair: _mutate_all(*pair)),
)


def _mutate_all(data: bytes, mutations: list[tuple]) -> bytes:
    for mutation in mutations:
        data = apply_byte_mutation(data, mutation)
    return data


NAMES = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=120)
MEMBER = st.one_of(
    st.builds(lambda name, data: file(name, data), NAMES, st.binary(max_size=600)),
    st.builds(folder, NAMES),
    st.builds(symlink, NAMES, NAMES),
    st.builds(hardlink, NAMES, NAMES),
)


@st.composite
def generated_models(draw: st.DrawFn) -> bytes:
    """An archive of generated members: any names, link targets, types, in GNU or pax format."""
    members = draw(st.lists(MEMBER, min_size=1, max_size=4))
    tar_format = draw(st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    try:
        tar = archives.tar_bytes(members, tar_format)
    except (ValueError, UnicodeError):  # tarfile cannot write this name in this format
        reject()
    return harness.compress(tar, draw(st.sampled_from(harness.COMPRESSIONS)))


def nul_in_pax_path() -> bytes:
    """A pax path with a NUL in it, which tarfile.data_filter cannot resolve."""
    member = file("model.bin", b"weights")
    member.info.pax_headers = {"path": "model\x00.bin"}
    return archives.gzip_bytes(archives.tar_bytes([member], tarfile.PAX_FORMAT))


def nul_in_pax_linkpath() -> bytes:
    link = symlink("weights.bin", "model.bin")
    link.info.pax_headers = {"linkpath": "model\x00.bin"}
    members = [file("model.bin", b"weights"), link]
    return archives.gzip_bytes(archives.tar_bytes(members, tarfile.PAX_FORMAT))


def huge_pax_record_length() -> bytes:
    """A pax record whose length field does not fit in a C ssize_t."""
    records = b"99999999999999999999 path=x\n"
    extended = tarfile.TarInfo("././@PaxHeader")
    extended.type, extended.size = tarfile.XHDTYPE, len(records)
    tar = (extended.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)
           + archives.tar_bytes([file("model.bin", b"weights")], tarfile.USTAR_FORMAT))
    return archives.gzip_bytes(tar)


def pax_global_path() -> bytes:
    """A pax global header whose path applies to every later member, the new one included."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"path": "config.json"}) as archive:
        archive.addfile(file("config.json", b"{}").info, io.BytesIO(b"{}"))
    return archives.gzip_bytes(buffer.getvalue())


# Inputs the campaign or Hypothesis found to break the property, minimised.
KNOWN_FINDINGS = {
    # Once ended in exit 0 with an output where tarfile and GNU tar 1.34 named
    # the added member config.json.
    "pax-global-path": pax_global_path(),
    "nul-in-pax-path": nul_in_pax_path(),
    "nul-in-pax-linkpath": nul_in_pax_linkpath(),
    "huge-pax-record-length": huge_pax_record_length(),
    # A file of 1-3 bytes that are not valid UTF-8: the text preview in the
    # INVALID_FORMAT message finds no line in it.
    # A garbage global pax header (type g, no records) in front of a dropped
    # ./hyperparameters.json: the job keeps the header, after the member before it.
    "global-header-before-dropped": bytes.fromhex(
        "fd377a585a000004e6d6b446020021010c0000008f98419ce027ff00ce5d00170bc8a3db410f"
        "259a84fabd3d1d920a65d0db0143c3687caeefae8ef4c6f022e2105dce526a01bedcc96dd0c4"
        "ad603932892b422a636860cff8970f91c944fcb6452f2472994d3cd04b7817a174dea6cd0c6d"
        "12565da8c4ef929686f09bd114ba5999061e99b6d5271a9e520d7bdce452b259649c23815101"
        "ce3e5cd8de20189a1bff6aad19f620a2e09fde0adef099909f4e4e60099fbacf553a22bac68f"
        "179c37875d776d99ec28e1c98f5b92142ac3a981b27522464e8acdae0d710b65190a9eac9de4"
        "237d80619ae4a964000000001079d2270a7c94250001ea0180500000025d0fc8b1c467fb0200"
        "00000004595a"
    ),
    "one-invalid-utf8-byte": b"\xff",
    "space-and-invalid-utf8": b" \xff",
}


# --- Tests ------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS, ids=[seed.name for seed in SEEDS])
def test_fuzz_seed_repacks_cleanly(workspace, seed):
    run = workspace.run(seed.model, harness.HYPERPARAMETER_SEEDS[1])

    assert run.exit_code == 0, run.log
    harness.check(workspace, seed.model, harness.HYPERPARAMETER_SEEDS[1], run, TIME_LIMIT)


@settings(FUZZ_SETTINGS, max_examples=300)
@given(model=mutated_models(), hyperparameters=HYPERPARAMETERS, recompress=st.booleans())
def test_fuzz_mutated_inputs_end_cleanly(workspace, model, hyperparameters, recompress):
    run_and_check(workspace, model, hyperparameters, recompress)


@settings(FUZZ_SETTINGS, max_examples=150)
@given(model=generated_models(), hyperparameters=st.sampled_from(harness.HYPERPARAMETER_SEEDS))
def test_fuzz_generated_archives_end_cleanly(workspace, model, hyperparameters):
    run_and_check(workspace, model, hyperparameters)


@pytest.mark.parametrize("name", KNOWN_FINDINGS)
def test_fuzz_known_finding_ends_cleanly(workspace, name):
    run_and_check(workspace, KNOWN_FINDINGS[name], b"{}")


def test_fuzz_random_mutator_inputs_end_cleanly(workspace):
    """The campaign's own mutator, with a fixed seed: 200 inputs."""
    for number in range(200):
        rng = random.Random(f"ci:{number}")
        model = harness.mutate_model(SEEDS, rng)
        hyperparameters = harness.mutate_hyperparameters(rng)

        run_and_check(workspace, model, hyperparameters, label=f"input ci:{number}: ")


def test_fuzz_check_rejects_damaged_output(workspace):
    """The property check itself: a damaged output or a leftover file must fail it."""
    seed = SEEDS[0]
    hyperparameters = harness.HYPERPARAMETER_SEEDS[0]
    run = workspace.run(seed.model, hyperparameters)
    output = workspace.output_dir / "model.tar.gz"
    good = output.read_bytes()

    output.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(harness.PropertyViolation, match="gzip check"):
        harness.check(workspace, seed.model, hyperparameters, run, TIME_LIMIT)

    output.write_bytes(good)
    (workspace.output_dir / ".model.tar.gz.x.tmp").write_bytes(b"")
    with pytest.raises(harness.PropertyViolation, match="output folder holds"):
        harness.check(workspace, seed.model, hyperparameters, run, TIME_LIMIT)

    (workspace.output_dir / ".model.tar.gz.x.tmp").unlink()
    with pytest.raises(harness.PropertyViolation, match="hyperparameters.json differs"):
        harness.check(workspace, seed.model, b'{"other": 1}', run, TIME_LIMIT)
