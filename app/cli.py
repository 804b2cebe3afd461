"""The command line: parse options, run the stages, turn any error into exit code 1."""

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from app import hyperparameters, locate
from app.deflate import available_cpus
from app.errors import ErrorCode, Interrupted, RepackError
from app.progress import format_size
from app.publish import OutputFile
from app.rewrite import NewMember, Options, repack

log = logging.getLogger("app")

DEFAULT_CODE_DIR = Path("/opt/ml/code")
DEFAULT_PROCESSING_DIR = Path("/opt/ml/processing")
DEFAULT_FAILURE_MESSAGE = Path("/opt/ml/output/message")
# SageMaker shows the failure message as the job's ExitMessage, which it cuts at 1 KiB.
FAILURE_MESSAGE_LIMIT = 1000


def main(argv: list[str] | None = None) -> int:
    """Run the job; return the process exit code.

    Without `argv` the command line is sys.argv and main() acts as the process
    entry point (see StopSignals for what that changes).
    """
    _configure_logging()
    try:
        args = parse_args(argv)
    except RepackError as exc:
        return _fail(exc, _failure_message_path(sys.argv[1:] if argv is None else argv))

    with StopSignals(restore=argv is not None) as signals:
        try:
            signals.start()
            run(args, signals)
        except RepackError as exc:
            return _fail(exc, args.failure_message)
        except Interrupted as exc:
            return _fail(RepackError(ErrorCode.INTERRUPTED,
                                     f"stopped by {exc.signal_name}; no output was written"),
                         args.failure_message)
        except Exception as exc:  # a bug: keep the traceback
            log.exception("INTERNAL_ERROR: unexpected %s", type(exc).__name__)
            _write_failure_message(args.failure_message,
                                   f"INTERNAL_ERROR: unexpected {type(exc).__name__}; "
                                   "see the job's log for the traceback")
            return 1
    return 0


def run(args: argparse.Namespace, signals: "StopSignals") -> None:
    """Find and check the inputs, repack, verify and publish."""
    started = time.monotonic()
    model = locate.find_model(args.model, args.code_dir, args.processing_dir)
    hyperparameters_path = locate.find_hyperparameters(args.hyperparameters, args.code_dir,
                                                       args.processing_dir)
    new_member = NewMember(hyperparameters.load(hyperparameters_path),
                           _member_mtime(hyperparameters_path))
    options = Options(args.compression_level, args.threads, args.recompress)
    output_dir = args.output_dir or args.processing_dir / "output" / "model"

    output = None
    try:
        output = OutputFile(output_dir, write_behind=not options.single_threaded)
        result = repack(model, new_member, output, options)
        with signals.deferred():
            path = output.publish()
            signals.published = True
    finally:
        if output is not None:
            output.discard()

    elapsed = time.monotonic() - started
    log.info("Wrote %d members, %s of tar data, %s compressed (ratio %.2f)", result.members,
             format_size(result.tar_size), format_size(output.size),
             result.tar_size / max(output.size, 1))
    log.info("Took %.1f s (%s/s of tar data); %s", elapsed,
             format_size(result.tar_size / max(elapsed, 1e-9)), result.path_taken)
    log.info("Wrote %s: %d members, sha256 %s", path, result.members, output.sha256())


class StopSignals:
    """Turns the first SIGTERM or SIGINT into `Interrupted`, until the output is published.

    Later signals are ignored, so that cleanup finishes, and so are signals after
    the output was renamed into place: the job has then succeeded. entrypoint.py
    blocks both signals while Python imports the app; `start` unblocks them once
    the handlers are in place.

    On leaving, the previous handlers come back when `restore` is true (main()
    called from Python code, tests for one). As the process entry point the
    signals stay ignored instead, so a stop that comes while the interpreter
    shuts down cannot turn the job's exit code into 143.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, restore: bool) -> None:
        self.published = False
        self._restore = restore
        self._stopping = False
        self._deferring = False
        self._pending: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        for number in self.SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler if self._restore else signal.SIG_IGN)

    def start(self) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)

    @contextlib.contextmanager
    def deferred(self):
        """Hold a signal back while the body runs, and act on it afterwards.

        A flag, not the signal mask, does this: the kernel may hand a signal to
        any thread, and Python then runs the handler in the main thread anyway.
        """
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None and not self.published:
            self._stopping = True
            raise Interrupted(self._pending)

    def _handle(self, number: int, frame: object) -> None:
        name = signal.Signals(number).name
        if self.published:
            log.warning("Ignoring %s: the output is already published", name)
            return
        if self._stopping:
            log.warning("Ignoring %s: already stopping", name)
            return
        if self._deferring:
            self._pending = name
            return
        self._stopping = True
        raise Interrupted(name)


class _ArgumentParser(argparse.ArgumentParser):
    """Reports a bad command line as INVALID_ARGUMENT, so it exits 1 like every failure."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        raise RepackError(ErrorCode.INVALID_ARGUMENT, f"{message}; see --help for the options")


def _failure_message_path(argv: list[str]) -> Path:
    """Find --failure-message in a command line that could not be parsed as a whole."""
    for index, argument in enumerate(argv):
        if argument.startswith("--failure-message="):
            return Path(argument.partition("=")[2])
        if argument == "--failure-message" and index + 1 < len(argv):
            return Path(argv[index + 1])
    return DEFAULT_FAILURE_MESSAGE


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _ArgumentParser(
        prog="entrypoint.py",
        description="Add hyperparameters.json to the root of a pretrained model.tar.gz, "
                    "for SageMaker's packaging steps. Exit status: 0 on success, 1 on failure.",
        epilog=_search_order_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code-dir", type=Path, default=DEFAULT_CODE_DIR, metavar="DIR",
                        help="folder searched first for the inputs (default: %(default)s)")
    parser.add_argument("--processing-dir", type=Path, default=DEFAULT_PROCESSING_DIR,
                        metavar="DIR", help="SageMaker Processing folder holding input/ and "
                                            "output/ (default: %(default)s)")
    parser.add_argument("--model", type=Path, metavar="FILE",
                        help="model archive to use instead of searching for one")
    parser.add_argument("--hyperparameters", type=Path, metavar="FILE",
                        help="hyperparameters.json to use instead of searching for one")
    parser.add_argument("--output-dir", type=Path, metavar="DIR",
                        help="folder for the output model.tar.gz "
                             "(default: <processing-dir>/output/model)")
    parser.add_argument("--failure-message", type=Path, default=DEFAULT_FAILURE_MESSAGE,
                        metavar="FILE", help="file that receives a one-line reason on failure, "
                                             "shown by SageMaker as ExitMessage "
                                             "(default: %(default)s)")
    parser.add_argument("--compression-level", type=_level, default=6, metavar="1-9",
                        help="gzip level for the data that is compressed again (default: 6)")
    parser.add_argument("--threads", type=_positive, default=None, metavar="N",
                        help="compression threads (default: the CPUs available, "
                             f"{available_cpus()} here); 1 also runs the output's writing "
                             "and verification on the main thread, so the job uses one CPU")
    parser.add_argument("--recompress", action="store_true",
                        help="compress the whole archive again instead of keeping the input's "
                             "compressed bytes up to the first change")
    return parser.parse_args(argv)


def _search_order_help() -> str:
    code, processing = Path("<code-dir>"), Path("<processing-dir>")
    models = "\n".join(f"  {i}. {p}" for i, p in
                       enumerate(locate.model_candidates(code, processing), 1))
    params = "\n".join(f"  {i}. {p}" for i, p in
                       enumerate(locate.hyperparameters_candidates(code, processing), 1))
    return (f"The first existing file wins.\nmodel.tar.gz is searched at:\n{models}\n"
            f"hyperparameters.json is searched at:\n{params}\n"
            "The output is a gzip tar of every original member plus hyperparameters.json at "
            "its root.\nSOURCE_DATE_EPOCH, when set, is the new member's mtime.")


def _level(text: str) -> int:
    value = _positive(text)
    if value > 9:
        raise argparse.ArgumentTypeError(f"{text} is not a compression level from 1 to 9")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be 1 or more")
    return value


# The ustar header's mtime field has room for 11 octal digits: 0 to 8**11 - 1 (the year 2242).
MAX_USTAR_MTIME = 8**11 - 1


def _member_mtime(path: Path) -> int:
    """Return the new member's mtime: SOURCE_DATE_EPOCH when set, else the file's own."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    mtime = None
    if epoch:
        try:
            mtime = int(epoch)
        except ValueError:
            log.warning("Ignoring SOURCE_DATE_EPOCH=%r: not a whole number of seconds", epoch)
    if mtime is None:
        mtime = int(path.stat().st_mtime)
    if not 0 <= mtime <= MAX_USTAR_MTIME:
        clamped = min(max(mtime, 0), MAX_USTAR_MTIME)
        log.warning("The new member's mtime %d is outside what a tar header holds; using %d",
                    mtime, clamped)
        mtime = clamped
    return mtime


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def _fail(error: RepackError, failure_message: Path) -> int:
    log.error("%s", error)
    _write_failure_message(failure_message, str(error))
    return 1


def _write_failure_message(path: Path, text: str) -> None:
    """Write the one-line failure message; an OSError here is logged, not raised."""
    line = " ".join(text.split())
    encoded = line.encode("utf-8")[:FAILURE_MESSAGE_LIMIT].decode("utf-8", errors="ignore")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(encoded + "\n", encoding="utf-8")
    except OSError as exc:
        log.warning("Could not write the failure message to %s: %s", path,
                    exc.strerror or exc)
