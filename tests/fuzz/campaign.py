"""Run the long fuzz campaign: a million mutated inputs through the job, in-process.

Not part of CI (tests/unit/test_fuzz.py runs a short version there). Each input
is a seed archive from tests/fuzz/harness.py with random mutations, checked
against the property stated in that module. Input number N depends only on
--seed and N, so `--start N --count 1` runs one input again.

Run it in the background, from the repository root, with the test venv:

    nohup nice -n 10 env PYTHONPATH=. .venv/bin/python tests/fuzz/campaign.py \\
        --count 1000000 --out /tmp/fuzz-campaign > /tmp/fuzz-campaign.log 2>&1 &

Check on it with `tail -n 3 /tmp/fuzz-campaign/progress.log`. Every
property violation is saved under <out>/findings/<signature>/: the model file,
the hyperparameters file and a report with the violation and the job's log.
Only the first few inputs of each signature are saved; all are counted.
The run ends with a summary line, and exit status 1 if anything was found.

The campaign passes `--threads 1` and runs one process at a time, so it uses
about one core. Each chunk of --progress-every inputs runs in a forked child,
so threads that a run leaves behind end with their chunk instead of piling up
for a million runs. A daemon thread still running at the end of its chunk is
saved as a finding, with the input that started it. It memoises argument parsing (the command line never changes between
runs), and its working files live in /dev/shm when that exists, because a
run on a small input costs a few milliseconds and file system calls are much
of that.
"""

import argparse
import collections
import functools
import hashlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import app.cli
from app.errors import Interrupted
from tests.fuzz import harness

SAVED_PER_SIGNATURE = 5


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    # The job's MemberChecker makes a temporary folder per run.
    tempfile.tempdir = str(scratch) if scratch else None
    app.cli.parse_args = functools.lru_cache(maxsize=4)(_parse_args_tuple)

    seeds = harness.build_seeds()
    campaign = Campaign(args, seeds, Path(tempfile.mkdtemp(prefix="fuzz-", dir=scratch)))
    try:
        campaign.run()
    finally:
        campaign.summarise()
    return 1 if campaign.findings else 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="inputs to run")
    parser.add_argument("--start", type=int, default=0, help="number of the first input")
    parser.add_argument("--seed", type=int, default=1, help="campaign seed")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fuzz-campaign"),
                        help="folder for progress.log, summary.json and findings/")
    parser.add_argument("--time-limit", type=float, default=5.0,
                        help="seconds a run may take before it counts as a finding")
    parser.add_argument("--progress-every", type=int, default=1_000,
                        help="inputs per forked worker and between progress lines")
    return parser.parse_args()


def _parse_args_tuple(argv: tuple[str, ...] | list[str] | None) -> argparse.Namespace:
    return _original_parse_args(list(argv) if argv is not None else None)


_original_parse_args = app.cli.parse_args


class Campaign:
    """The loop: make input N, run the job, check the property, record what happened."""

    def __init__(self, args: argparse.Namespace, seeds: list[harness.Seed], work: Path) -> None:
        self.args = args
        self.seeds = seeds
        self.workspace = harness.Workspace(work)
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.findings: collections.Counter[str] = collections.Counter()
        self.done = 0
        self.started = time.monotonic()
        self.progress = (args.out / "progress.log").open("a", encoding="utf-8")
        self.stopping = False
        self.child: int | None = None
        # (input number, thread, model, hyperparameters, recompress, run) for daemon
        # threads still running right after their run; checked again at chunk end.
        self.suspects: list[tuple] = []

    def run(self) -> None:
        self.note(f"start: inputs {self.args.start}..{self.args.start + self.args.count - 1}, "
                  f"seed {self.args.seed}, {len(self.seeds)} seed archives, "
                  f"work folder {self.workspace.root}, engine at {_engine_revision()}")
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        end = self.args.start + self.args.count
        for chunk_start in range(self.args.start, end, self.args.progress_every):
            if self.stopping:
                self.note("stopped by a signal")
                return
            self.run_chunk_in_child(chunk_start, min(chunk_start + self.args.progress_every, end))
            self.report_progress()

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True
        if self.child is not None:
            os.kill(self.child, signum)

    def run_chunk_in_child(self, start: int, end: int) -> None:
        """Run inputs start..end-1 in a forked child; take over its counts when it ends."""
        state_file = self.args.out / "chunk-state.json"
        state_file.unlink(missing_ok=True)
        self.child = os.fork()
        if self.child == 0:
            code = 0
            try:
                self.run_chunk(start, end)
            except Interrupted:
                code = 3
            except BaseException:
                traceback.print_exc()
                code = 2
            finally:
                state_file.write_text(json.dumps({"done": self.done,
                                                  "outcomes": self.outcomes,
                                                  "findings": self.findings}))
            os._exit(code)

        _, status = os.waitpid(self.child, 0)
        self.child = None
        if state_file.exists():
            state = json.loads(state_file.read_text())
            self.done = state["done"]
            self.outcomes = collections.Counter(state["outcomes"])
            self.findings = collections.Counter(state["findings"])
        if os.waitstatus_to_exitcode(status) == 3:
            self.stopping = True
        elif status != 0 and not self.stopping:
            self.findings["worker-crashed"] += 1
            self.note(f"finding worker-crashed: the child running inputs {start}..{end - 1} "
                      f"ended with status {os.waitstatus_to_exitcode(status)}; rerun that "
                      "range with --start and --count to find the input")

    def run_chunk(self, start: int, end: int) -> None:
        # Like the job's own handlers, which replace these during each run.
        signal.signal(signal.SIGTERM, _raise_interrupted)
        signal.signal(signal.SIGINT, _raise_interrupted)
        for number in range(start, end):
            self.run_one(number)
            self.done += 1
        self.record_leaked_threads()

    def record_leaked_threads(self) -> None:
        # A thread may still be ending when its run was the last of the chunk.
        deadline = time.monotonic() + 1.0
        for number, thread, model, hyperparameters, recompress, run in self.suspects:
            thread.join(max(deadline - time.monotonic(), 0))
            if thread.is_alive():
                self.record(number, model, hyperparameters, recompress, run,
                            f"daemon thread {thread.name!r} still running at the end of "
                            "the chunk")
        self.suspects.clear()

    def run_one(self, number: int) -> None:
        rng = random.Random(f"{self.args.seed}:{number}")
        model = harness.mutate_model(self.seeds, rng)
        hyperparameters = harness.mutate_hyperparameters(rng)
        recompress = rng.random() < 0.2

        run = self.workspace.run(model, hyperparameters, recompress)
        if run.error is not None and isinstance(run.error, Interrupted):
            raise run.error
        if "ERROR INTERRUPTED:" in run.log:
            # The job's own SIGTERM and SIGINT handlers turned the stop request into exit 1.
            raise Interrupted("a signal during a run")
        self.outcomes[_outcome(run)] += 1

        try:
            harness.check(self.workspace, model, hyperparameters, run, self.args.time_limit)
        except harness.PropertyViolation as violation:
            self.record(number, model, hyperparameters, recompress, run, str(violation))
        for thread in run.leftover_threads:
            if thread.daemon:
                self.suspects.append((number, thread, model, hyperparameters, recompress, run))

    def record(self, number: int, model: bytes, hyperparameters: bytes, recompress: bool,
               run: harness.Run, violation: str) -> None:
        """Count a finding and save its inputs, unless its signature has enough already."""
        signature = _signature(violation, run)
        self.findings[signature] += 1
        if self.findings[signature] > SAVED_PER_SIGNATURE:
            return
        folder = self.args.out / "findings" / signature
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{number}-model.tar.gz").write_bytes(model)
        (folder / f"{number}-hyperparameters.json").write_bytes(hyperparameters)
        error = "".join(traceback.format_exception(run.error)) if run.error else ""
        (folder / f"{number}-report.txt").write_text(
            f"input {number}, campaign seed {self.args.seed}\n"
            f"rerun: PYTHONPATH=. .venv/bin/python tests/fuzz/campaign.py --seed "
            f"{self.args.seed} --start {number} --count 1 --out /tmp/fuzz-rerun\n"
            f"--recompress: {recompress}\nviolation: {violation}\n"
            f"exit code: {run.exit_code}, {run.seconds:.3f} s\n"
            f"{error}--- log ---\n{run.log}", encoding="utf-8")
        self.note(f"finding {signature} at input {number}: {violation}")

    def report_progress(self) -> None:
        elapsed = time.monotonic() - self.started
        memory = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
        outcomes = ", ".join(f"{name} {count}" for name, count in self.outcomes.most_common())
        self.note(f"{self.done} inputs in {elapsed:.0f} s ({self.done / elapsed:.0f}/s), "
                  f"findings {sum(self.findings.values())} in {len(self.findings)} "
                  f"signature(s), max RSS {memory} MiB; {outcomes}")
        self.write_summary(elapsed)

    def summarise(self) -> None:
        elapsed = time.monotonic() - self.started
        self.write_summary(elapsed)
        self.note(f"end: {self.done} inputs in {elapsed:.0f} s, "
                  f"{sum(self.findings.values())} findings: {dict(self.findings)}")

    def write_summary(self, elapsed: float) -> None:
        summary = {"seed": self.args.seed, "start": self.args.start, "inputs": self.done,
                   "seconds": round(elapsed), "outcomes": dict(self.outcomes),
                   "findings": dict(self.findings)}
        (self.args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def note(self, line: str) -> None:
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
        print(stamped, file=self.progress, flush=True)
        print(stamped, file=sys.__stdout__, flush=True)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signal.Signals(signum).name)


def _outcome(run: harness.Run) -> str:
    """Return "exit 0", the error code of the ERROR line, or "other"."""
    if run.exit_code == 0:
        return "exit 0"
    codes = harness.ERROR_LINE.findall(run.log)
    return codes[0] if codes else "other"


def _signature(violation: str, run: harness.Run) -> str:
    """Name a finding by its violation and the innermost traceback line in the log."""
    lines = run.log.splitlines()
    frames = [line.strip() for line in lines if line.startswith('  File "')]
    errors = [line.split(":")[0] for line in lines
              if line and not line.startswith((" ", "INFO", "WARNING", "ERROR", "Trace"))]
    violation_kind = re.sub(r"'[^']*'|\d+", "", violation.split(":")[0])
    key = "|".join([violation_kind, frames[-1] if frames else "", errors[-1] if errors else ""])
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _engine_revision() -> str:
    """Return the commit of the repository, with "+changes" when app/ differs from it."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "app"],
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return commit + ("+changes" if changed else "")


if __name__ == "__main__":
    sys.exit(main())
