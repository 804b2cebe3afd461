"""Faults in the container: stops at random moments, and an older output in the output folder.

Every stop must leave the output folder as it was: no temporary file, and
either no model.tar.gz or the older one, byte for byte.
"""

import dataclasses
import hashlib
import random
import signal
import re
import tarfile
import time
import zlib
from pathlib import Path

import docker.errors
import pytest

from tests.integration.support import (CODE_DIR, ERROR_LINE, FAILURE_DIR, OUTPUT_DIR,
                                       SUCCESS_LINE, Job, JobResult, assert_failure_message,
                                       assert_repacked, assert_success_logged, collect_result,
                                       files_under, wait_for_exit, wait_until,
                                       write_hyperparameters, write_model)

pytestmark = pytest.mark.container

MIB = 1 << 20
# Random bytes barely compress, so with --recompress at level 1 on one thread
# the job deflates them for several seconds on a 2-core machine, and the fast
# path copies them in under a second.
SHARDS = 3
SHARD_SIZE = 32 * MIB
FAST = ["--threads", "1"]
RECOMPRESS = ["--recompress", "--threads", "1", "--compression-level", "1"]

# Rounds that signal while the job reads and writes, and rounds that signal at
# its last log lines, when it verifies and publishes. Those mostly finish first:
# then the output must be whole.
BODY_ROUNDS = 24
END_ROUNDS = 4
MIN_INTERRUPTED = 20
SEED = 5150
# The job must exit this soon after the signal; it has no reason to linger.
PROMPT_EXIT = 10
# How long a round may take to reach its trigger; the slowest full run takes about 10 s.
TRIGGER_TIMEOUT = 60


@dataclasses.dataclass(frozen=True)
class LargeInputs:
    """A large gzip model and a hyperparameters.json, each in its own folder."""

    models: Path
    hyperparams: Path
    model_size: int
    hyperparameters: bytes


@pytest.fixture(scope="module")
def large_inputs(tmp_path_factory: pytest.TempPathFactory) -> LargeInputs:
    """Write a 96 MiB gzip model of random shards, deflated at level 1 as it is built."""
    root = tmp_path_factory.mktemp("faults")
    model = root / "models" / "model.tar.gz"
    model.parent.mkdir()
    hyperparameters = write_hyperparameters(root / "hyperparams" / "hyperparameters.json",
                                            seed="faults")

    rng = random.Random(SEED)
    compressor = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    with model.open("wb") as file:
        for index in range(SHARDS):
            info = tarfile.TarInfo(f"model-{index + 1:05d}-of-{SHARDS:05d}.safetensors")
            info.size, info.mtime = SHARD_SIZE, 1_700_000_000
            file.write(compressor.compress(info.tobuf(tarfile.GNU_FORMAT)))
            for _ in range(SHARD_SIZE // MIB):
                file.write(compressor.compress(rng.randbytes(MIB)))
        file.write(compressor.compress(bytes(2 * tarfile.BLOCKSIZE)))
        file.write(compressor.flush())
    return LargeInputs(model.parent, model.parent.parent / "hyperparams", model.stat().st_size,
                       hyperparameters)


def large_job(image: str, inputs: LargeInputs, folder: Path, arguments: list[str]) -> Job:
    (folder / "output").mkdir(parents=True, exist_ok=True)
    (folder / "failure").mkdir()
    return (Job(image, arguments=arguments)
            .mount(inputs.models, f"{CODE_DIR}/models")
            .mount(inputs.hyperparams, f"{CODE_DIR}/hyperparams")
            .mount(folder / "output", OUTPUT_DIR, "rw")
            .mount(folder / "failure", FAILURE_DIR, "rw"))


@dataclasses.dataclass(frozen=True)
class Round:
    """One stop of the job: when to send which signal, and the output folder it starts with."""

    number: int
    signal_name: str
    arguments: list[str]
    trigger: str
    output_fraction: float
    extra_polls: int
    older_output: bool

    def describe(self) -> str:
        mode = "--recompress" if "--recompress" in self.arguments else "fast path"
        where = (f" at {self.output_fraction:.0%} of the output"
                 if self.trigger == "output size" else "")
        return (f"round {self.number}: {self.signal_name} on '{self.trigger}'{where} "
                f"+ {self.extra_polls} polls, {mode}, "
                f"{'older output present' if self.older_output else 'empty output folder'}")


# What each round waits for before it signals: a log line or the temporary file.
# "read done" is the line after the last input byte, before the output is verified.
LOG_TRIGGERS = {
    "found": re.compile(r"^INFO Found model: ", re.MULTILINE),
    "reading": re.compile(r"^INFO Reading ", re.MULTILINE),
    "fast path": re.compile(r"^INFO Fast path: ", re.MULTILINE),
    "read done": re.compile(r"^INFO Read \S+ \S+ in ", re.MULTILINE),
}
BODY_TRIGGERS = ["found", "reading", "temporary file", "output size", "output size",
                 "output size"]
END_TRIGGERS = ["fast path", "read done"]
# The fast path writes its output in well under a second, so its rounds stop
# early enough that the signal still arrives before the end.
MAX_FRACTION = {"fast path": 0.5, "--recompress": 0.9}


def kill_rounds() -> list[Round]:
    """Return the seeded rounds: signals alternate, and so do pairs of fast and slow runs."""
    rng = random.Random(SEED)
    rounds = []
    for number in range(BODY_ROUNDS + END_ROUNDS):
        arguments = RECOMPRESS if number // 2 % 2 else FAST
        if number < BODY_ROUNDS:
            trigger = rng.choice(BODY_TRIGGERS)
        else:
            trigger = rng.choice(END_TRIGGERS if arguments is FAST else ["read done"])
        mode = "--recompress" if arguments is RECOMPRESS else "fast path"
        signal_name = "SIGTERM" if number % 2 == 0 else "SIGINT"
        rounds.append(Round(number, signal_name, arguments, trigger,
                            rng.uniform(0, MAX_FRACTION[mode]), rng.randrange(8),
                            rng.random() < 0.5))
    return rounds


class Watcher:
    """Polls a running job's logs, container state and temporary file."""

    def __init__(self, container, output_dir: Path) -> None:
        self.wrapped = container.get_wrapped_container()
        self.container = container
        self.model_dir = output_dir / "model"

    def stderr(self) -> str:
        return self.container.get_logs()[1].decode(errors="replace")

    def running(self) -> bool:
        self.wrapped.reload()
        return self.wrapped.status == "running"

    def temporary_size(self) -> int | None:
        for path in self.model_dir.glob(".model.tar.gz.*.tmp"):
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return None
        return None

    def reached(self, round_: Round, model_size: int) -> bool:
        if round_.trigger in LOG_TRIGGERS:
            return LOG_TRIGGERS[round_.trigger].search(self.stderr()) is not None
        size = self.temporary_size()
        if round_.trigger == "temporary file":
            return size is not None
        return size is not None and size >= round_.output_fraction * model_size


def send_signal(wrapped, signal_name: str) -> bool:
    """Send the signal; return False if the job had already exited."""
    try:
        wrapped.kill(signal=signal_name)
    except docker.errors.APIError as exc:
        # 409 Conflict: the container is no longer running.
        if exc.status_code != 409:
            raise
        return False
    return True


def run_round(image: str, inputs: LargeInputs, folder: Path,
              round_: Round) -> tuple[JobResult, bool]:
    """Run the job and signal it at the round's moment; return its result and if it got the signal.

    The extra polls after the trigger are a seeded delay of a few milliseconds each.
    """
    job = large_job(image, inputs, folder, round_.arguments)
    with job.start() as container:
        watcher = Watcher(container, folder / "output")
        wait_until(lambda: watcher.reached(round_, inputs.model_size) or not watcher.running(),
                   TRIGGER_TIMEOUT, f"the trigger of {round_.describe()}")
        for _ in range(round_.extra_polls):
            watcher.reached(round_, inputs.model_size)
        signalled = send_signal(watcher.wrapped, round_.signal_name)
        sent = time.monotonic()
        exit_code = wait_for_exit(container, PROMPT_EXIT + TRIGGER_TIMEOUT)
        if signalled:
            assert time.monotonic() - sent < PROMPT_EXIT, f"{round_.describe()}: slow exit"
        return collect_result(container, exit_code), signalled


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_kills_at_random_moments_leave_no_partial_output(image: str, tmp_path: Path,
                                                         large_inputs: LargeInputs):
    older = tmp_path / "older.tar.gz"
    write_model(older, seed="an older run")
    interrupted = []
    finished_first = []

    for round_ in kill_rounds():
        folder = tmp_path / f"round-{round_.number:02d}"
        published = folder / "output" / "model" / "model.tar.gz"
        if round_.older_output:
            published.parent.mkdir(parents=True)
            published.write_bytes(older.read_bytes())

        result, signalled = run_round(image, large_inputs, folder, round_)

        context = f"{round_.describe()}\nstderr:\n{result.stderr}"
        if signalled and result.exit_code != 0 and not result.stderr.strip():
            # The signal came while Python itself was starting, before entrypoint.py
            # could hold it back: the interpreter died of it, before any output.
            assert result.exit_code == 128 + signal.Signals[round_.signal_name], context
            interrupted.append(round_.number)
        elif signalled and result.exit_code != 0:
            assert result.exit_code == 1, context
            assert result.error_codes() == ["INTERRUPTED"], context
            assert "Traceback" not in result.stderr, context
            text = ERROR_LINE.search(result.stderr)["text"]
            assert round_.signal_name in text, context
            assert_failure_message(folder / "failure", "INTERRUPTED", text)
            interrupted.append(round_.number)
        else:
            # The job wrote its output before the signal arrived, so it must be whole.
            assert result.exit_code == 0, context
            assert SUCCESS_LINE.search(result.stderr), context
            assert SUCCESS_LINE.search(result.stderr)["sha256"] == sha256_of(published), context
            assert files_under(folder / "output") == ["model/model.tar.gz"], context
            assert_repacked(published, large_inputs.models / "model.tar.gz",
                            large_inputs.hyperparameters)
            finished_first.append(round_.number)
            continue

        if round_.older_output:
            assert files_under(folder / "output") == ["model/model.tar.gz"], context
            assert published.read_bytes() == older.read_bytes(), context
        else:
            assert files_under(folder / "output") == [], context

    assert len(interrupted) >= MIN_INTERRUPTED, (
        f"only rounds {interrupted} were interrupted; {finished_first} finished first")


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_stop_right_after_start_is_not_lost(image: str, tmp_path: Path,
                                            large_inputs: LargeInputs, signal_name: str):
    # The signal arrives while Python starts, before the job's handlers exist.
    # A process that dies of the signal itself is fine here, but the job is PID 1
    # in the container, and the kernel drops signals that PID 1 has no handler for.
    job = large_job(image, large_inputs, tmp_path, FAST)

    with job.start() as container:
        container.get_wrapped_container().kill(signal=signal_name)
        result = collect_result(container, wait_for_exit(container, TRIGGER_TIMEOUT))

    assert result.exit_code != 0, f"the {signal_name} was lost; stderr:\n{result.stderr}"
    assert set(result.error_codes()) <= {"INTERRUPTED"}, result.stderr
    assert files_under(tmp_path / "output") == []


# Runs the job with os.replace wrapped so that the job sends itself SIGTERM
# right after it renames its output to model.tar.gz: the one moment no
# outside signal can be timed to hit.
STOP_AFTER_RENAME = """
import os, signal, sys
sys.path.insert(0, "/opt/repack")
rename = os.replace

def rename_then_stop(source, destination):
    rename(source, destination)
    if str(destination).endswith("/model.tar.gz"):
        os.kill(os.getpid(), signal.SIGTERM)

os.replace = rename_then_stop
from app import main
sys.exit(main([]))
"""


def test_stop_after_rename_keeps_result_consistent(image: str, tmp_path: Path,
                                                   output_dir: Path, failure_dir: Path):
    # Once model.tar.gz is replaced the job has succeeded. A stop then must end
    # in exit 0, or leave the older output in place, because exit code 1 with
    # "no output was written" beside a new model.tar.gz misleads the user.
    published = output_dir / "model" / "model.tar.gz"
    write_model(published, seed="an older run")
    older = published.read_bytes()
    model = write_model(tmp_path / "models" / "model.tar.gz", seed="this run")
    write_hyperparameters(tmp_path / "hyperparams" / "hyperparameters.json")
    job = (Job(image, entrypoint=["python3", "-c", STOP_AFTER_RENAME])
           .mount(model.parent, f"{CODE_DIR}/models")
           .mount(tmp_path / "hyperparams", f"{CODE_DIR}/hyperparams")
           .mount(output_dir, OUTPUT_DIR, "rw")
           .mount(failure_dir, FAILURE_DIR, "rw"))

    result = job.run()

    assert files_under(output_dir) == ["model/model.tar.gz"]
    if result.exit_code == 0:
        assert_success_logged(result, published)
    else:
        assert published.read_bytes() == older, (
            f"exit code {result.exit_code}, but model.tar.gz was replaced; stderr:\n"
            f"{result.stderr}")


# Runs the job on the large input and sends it SIGTERM from inside, after the
# fast path has copied 4 MiB. Then it sends SIGINT at the start of the step
# named in argv[1], the clean-up of the temporary file or the error report.
# A user who presses Ctrl-C after `docker stop` can hit either step.
SECOND_SIGNAL = """
import os, signal, sys
sys.path.insert(0, "/opt/repack")
from app import cli, main, publish

def once(signal_number):
    sent = []
    def send():
        if not sent:
            sent.append(signal_number)
            os.kill(os.getpid(), signal_number)
    return send

first, second = once(signal.SIGTERM), once(signal.SIGINT)
write_behind = publish.OutputFile.write_behind
copied = []

def write_behind_then_stop(self, data):
    write_behind(self, data)
    copied.append(len(data))
    if sum(copied) >= 4 << 20:
        first()

publish.OutputFile.write_behind = write_behind_then_stop
if sys.argv[1] == "clean-up":
    discard = publish.OutputFile.discard
    def stop_then_discard(self):
        second()
        discard(self)
    publish.OutputFile.discard = stop_then_discard
else:
    fail = cli._fail
    def stop_then_fail(error, path):
        second()
        return fail(error, path)
    cli._fail = stop_then_fail
sys.exit(main([]))
"""


@pytest.mark.parametrize("step", ["clean-up", "error report"])
def test_second_signal_during_step_is_handled(image: str, tmp_path: Path,
                                              large_inputs: LargeInputs, step: str):
    published = tmp_path / "output" / "model" / "model.tar.gz"
    write_model(published, seed="an older run")
    older = published.read_bytes()
    job = large_job(image, large_inputs, tmp_path, [])
    job.entrypoint = ["python3", "-c", SECOND_SIGNAL, step]

    result = job.run()

    assert result.exit_code == 1, result.stderr
    assert result.error_codes() == ["INTERRUPTED"], result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert files_under(tmp_path / "output") == ["model/model.tar.gz"], result.stderr
    assert published.read_bytes() == older
    assert (tmp_path / "failure" / "message").read_text().startswith("INTERRUPTED: ")


def test_success_replaces_older_output(image: str, tmp_path: Path, output_dir: Path):
    published = output_dir / "model" / "model.tar.gz"
    write_model(published, seed="an older run")
    older = published.read_bytes()
    model = write_model(tmp_path / "models" / "model.tar.gz", seed="this run")
    hyperparameters = write_hyperparameters(tmp_path / "hyperparams" / "hyperparameters.json")
    job = (Job(image)
           .mount(model.parent, f"{CODE_DIR}/models")
           .mount(tmp_path / "hyperparams", f"{CODE_DIR}/hyperparams")
           .mount(output_dir, OUTPUT_DIR, "rw"))

    result = job.run()

    assert_success_logged(result, published)
    assert files_under(output_dir) == ["model/model.tar.gz"]
    assert published.read_bytes() != older
    assert_repacked(published, model, hyperparameters)
    assert published.stat().st_mode & 0o777 == 0o644
