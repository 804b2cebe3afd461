"""Benchmark the repack against the inflate floor and two naive baselines.

For each model size and archive kind (see make_models.py), each of these runs in
its own child process, and the report gives wall time, ratio to the floor, CPU
time and peak RSS:
  floor           floor.py: read in 1 MiB chunks, inflate with zlib, discard
  repack          entrypoint.py with default options
  recompress-1    entrypoint.py --recompress --threads 1
  recompress-all  entrypoint.py --recompress --threads <CPUs available>
  naive           naive_repack.py: extract to a folder, then tarfile "w:gz"
  tar             tar xzf to a folder, then tar czf

Models, archives and logs stay in the work folder, and later runs reuse them.
Dropping the page cache needs privileges a benchmark should not need, so each
archive is read once before its runs and every run reads it from the cache.

  python3 bench/run.py                    # 100M and 1G, every archive and variant
  python3 bench/run.py --sizes 100M --only floor,repack --repeat 5
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import make_models  # noqa: E402  (found through the path set above)
from make_models import MiB, log  # noqa: E402
from report import (  # noqa: E402
    ENGINE_VARIANTS, THREADS, VARIANTS, format_report, run_description)
from verify import verify_output  # noqa: E402

# The floor and the repack take seconds and decide the main target, so they run
# --repeat times, alternating. The slow variants run --repeat-slow times.
FAST_VARIANTS = ("floor", "repack")
PATH_LOG_LINE = re.compile(r"fast path|recompress|fall(ing)? ?back", re.IGNORECASE)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Benchmark the repack against the inflate floor and naive baselines.")
    parser.add_argument("--sizes", default="100M,1G",
                        help="comma-separated model sizes, binary units (default: 100M,1G)")
    parser.add_argument("--archives", default=",".join(make_models.ARCHIVE_KINDS),
                        help="comma-separated archive kinds (default: "
                             f"{','.join(make_models.ARCHIVE_KINDS)})")
    parser.add_argument("--only", default=",".join(VARIANTS),
                        help=f"comma-separated variants (default: {','.join(VARIANTS)})")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of floor and repack per archive, of which the fastest "
                             "counts (default: 3)")
    parser.add_argument("--repeat-slow", type=int, default=1,
                        help="runs of every other variant per archive (default: 1)")
    parser.add_argument("--work-dir", type=Path,
                        default=Path(os.environ.get("BENCH_DIR", "/tmp/repack-bench")),
                        help="folder for models, archives, outputs and logs "
                             "(default: $BENCH_DIR or /tmp/repack-bench)")
    parser.add_argument("--project-dir", type=Path, default=BENCH_DIR.parent,
                        help="folder containing entrypoint.py (default: this repository)")
    parser.add_argument("--engine-args", default="",
                        help="extra arguments for every entrypoint.py run, "
                             "e.g. '--compression-level 6'")
    parser.add_argument("--timeout", type=int, default=900,
                        help="seconds after which a run is killed and marked FAIL (default: 900)")
    parser.add_argument("--seed", type=int, default=20240601, help="model generator seed")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the output checks ('-' in the check column)")
    parser.add_argument("--no-install", action="store_true",
                        help="do not install pigz with apt-get when it is missing")
    parser.add_argument("--report", type=Path,
                        help="also write the markdown report to this file")
    args = parser.parse_args(argv)

    args.sizes = [size for size in args.sizes.split(",") if size]
    args.archives = [kind for kind in args.archives.split(",") if kind]
    args.only = [variant for variant in args.only.split(",") if variant]
    unknown = sorted(set(args.archives) - set(make_models.ARCHIVE_KINDS))
    unknown += sorted(set(args.only) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown archive kind or variant: {', '.join(unknown)}")
    if args.repeat < 1 or args.repeat_slow < 1:
        parser.error("--repeat and --repeat-slow must be at least 1")
    args.work_dir = args.work_dir.resolve()
    args.project_dir = args.project_dir.resolve()
    return args


def engine_available(project_dir):
    entrypoint = project_dir / "entrypoint.py"
    if not entrypoint.exists():
        return False
    result = subprocess.run([sys.executable, str(entrypoint), "--help"], cwd=project_dir,
                            capture_output=True, check=False)
    return result.returncode == 0


def variant_command(variant, archive, hyperparameters, output_dir, args):
    """Return the command line that runs one variant, writing into output_dir."""
    output = output_dir / "model.tar.gz"
    temp_parent = args.work_dir / "tmp"
    if variant == "floor":
        return [sys.executable, str(BENCH_DIR / "floor.py"), str(archive)]
    if variant == "naive":
        return [sys.executable, str(BENCH_DIR / "naive_repack.py"), str(archive),
                str(hyperparameters), str(output), str(temp_parent)]
    if variant == "tar":
        script = ('set -e; folder=$(mktemp -d -p "$4"); trap \'rm -rf "$folder"\' EXIT; '
                  'tar xzf "$1" -C "$folder"; cp "$2" "$folder/hyperparameters.json"; '
                  'tar czf "$3" -C "$folder" .')
        return ["sh", "-c", script, "sh", str(archive), str(hyperparameters), str(output),
                str(temp_parent)]

    command = [sys.executable, str(args.project_dir / "entrypoint.py"),
               "--model", str(archive), "--hyperparameters", str(hyperparameters),
               "--output-dir", str(output_dir),
               "--failure-message", str(output_dir.parent / f"{output_dir.name}.message")]
    if variant == "recompress-1":
        command += ["--recompress", "--threads", "1"]
    elif variant == "recompress-all":
        command += ["--recompress", "--threads", str(THREADS)]
    return command + shlex.split(args.engine_args)


def busy_cpu_seconds():
    """Return the CPU seconds that all processes on the machine have used since boot."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def run_timed(command, log_path, timeout):
    """Run command under a fresh timed.py and return its figures and the others' load."""
    wrapper = [sys.executable, "-I", "-S", str(BENCH_DIR / "timed.py"), str(timeout),
               str(log_path)]
    busy_before = busy_cpu_seconds()
    started = time.perf_counter()
    result = subprocess.run([*wrapper, *command], capture_output=True, text=True, check=False)
    busy = busy_cpu_seconds() - busy_before
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) != 5:
        # The wrapper itself died (killed from outside, say): keep the run as a failure.
        with open(log_path, "a", encoding="utf-8") as log_file:
            log_file.write(f"timed.py exited with {result.returncode}: {result.stderr}\n")
        return {"returncode": result.returncode or 1, "wall_s": time.perf_counter() - started,
                "maxrss_kib": 0, "cpu_s": 0.0, "timed_out": False, "other_cpus": 0.0}
    returncode, wall_s, maxrss_kib, cpu_s, timed_out = fields
    wall_s, cpu_s = float(wall_s), float(cpu_s)
    return {"returncode": int(returncode), "wall_s": wall_s, "maxrss_kib": int(maxrss_kib),
            "cpu_s": cpu_s, "timed_out": timed_out == "1",
            "other_cpus": max(0.0, busy - cpu_s) / wall_s if wall_s > 0 else 0.0}


def failure_summary(result, log_path):
    """Return 'FAIL: exit N, <last ERROR line, or else the last log line>'."""
    if result["timed_out"]:
        return f"FAIL: killed after {result['wall_s']:.0f} s (--timeout)"
    lines = [line.strip() for line in log_path.read_text(errors="replace").splitlines()
             if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    last = ""
    if errors:
        last = errors[-1]
    elif lines:
        last = lines[-1]
    return f"FAIL: exit {result['returncode']}, {last}"[:300].rstrip(", ")


class ArchiveRuns:
    """The runs of every variant on one archive, and their outputs until checked."""

    def __init__(self, size, kind, archive, args):
        self.size, self.kind, self.archive, self.args = size, kind, archive, args
        self.run_dir = args.work_dir / size / "runs" / kind
        self.log_dir = args.work_dir / size / "logs"
        self.results = {}

    def output_dir(self, variant):
        return self.run_dir / variant

    def log_path(self, variant):
        return self.log_dir / f"{self.kind}.{variant}.log"

    def run(self, variant, hyperparameters):
        """Run one variant once, unless an earlier run of it failed."""
        results = self.results.setdefault(variant, [])
        if results and results[-1]["returncode"] != 0:
            return
        output_dir = self.output_dir(variant)
        shutil.rmtree(output_dir, ignore_errors=True)
        output_dir.mkdir(parents=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        command = variant_command(variant, self.archive, hyperparameters, output_dir, self.args)
        result = run_timed(command, self.log_path(variant), self.args.timeout)
        os.sync()  # flush this run's writes so they do not slow down the next run
        results.append(result)

    def row(self, variant, manifest, hyperparameters):
        """Check the variant's last output, delete it, and return the result row."""
        results = self.results[variant]
        fastest = min(results, key=lambda result: result["wall_s"])
        log_path = self.log_path(variant)
        check = "-"
        if results[-1]["returncode"] != 0:
            check = failure_summary(results[-1], log_path)
        elif variant in ENGINE_VARIANTS and not self.args.no_verify:
            problems = verify_output(self.output_dir(variant), manifest, hyperparameters,
                                     log_path)
            check = "PASS" if not problems else "FAIL: " + "; ".join(problems)
        shutil.rmtree(self.output_dir(variant), ignore_errors=True)

        log_lines = log_path.read_text(errors="replace").splitlines()
        return {"size": self.size, "archive": self.kind, "variant": variant,
                "runs": len(results), "wall_s": fastest["wall_s"], "cpu_s": fastest["cpu_s"],
                "other_cpus": fastest["other_cpus"],
                "rss_mib": max(result["maxrss_kib"] for result in results) / 1024,
                "check": check,
                "path_lines": [line for line in log_lines if PATH_LOG_LINE.search(line)],
                "floor_output": "\n".join(log_lines) if variant == "floor" else ""}


def warm_page_cache(path):
    with open(path, "rb", buffering=0) as stream:
        while stream.read(MiB):
            pass


def benchmark_archive(size, kind, archive, manifest, hyperparameters, variants, args):
    log(f"[{size} {kind}] warming the page cache with one read of {archive}")
    warm_page_cache(archive)
    runs = ArchiveRuns(size, kind, archive, args)

    fast = [variant for variant in variants if variant in FAST_VARIANTS]
    slow = [variant for variant in variants if variant not in FAST_VARIANTS]
    for _ in range(args.repeat):
        for variant in fast:
            runs.run(variant, hyperparameters)
    for _ in range(args.repeat_slow):
        for variant in slow:
            log(f"[{size} {kind}] running {VARIANTS[variant]}")
            runs.run(variant, hyperparameters)

    rows = []
    for variant in variants:
        row = runs.row(variant, manifest, hyperparameters)
        log(f"[{size} {kind}] {VARIANTS[variant]}: {row['wall_s']:.2f} s, "
            f"peak RSS {row['rss_mib']:.1f} MiB, {row['check']}")
        rows.append(row)
    return rows


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    (args.work_dir / "tmp").mkdir(parents=True, exist_ok=True)

    variants, notes = list(args.only), []
    if any(v in ENGINE_VARIANTS for v in variants) and not engine_available(args.project_dir):
        variants = [v for v in variants if v not in ENGINE_VARIANTS]
        notes.append(f"- `{args.project_dir / 'entrypoint.py'} --help` failed, "
                     "so the engine variants were skipped.")
        log(notes[-1])

    prepared = make_models.prepare(args.work_dir, args.sizes, args.seed,
                                   tuple(args.archives), install_pigz=not args.no_install)
    hyperparameters = make_models.ensure_hyperparameters(args.work_dir)

    rows = []
    for size, (manifest, archives) in prepared.items():
        for kind, archive in archives.items():
            rows += benchmark_archive(size, kind, archive, manifest, hyperparameters,
                                      variants, args)

    command = shlex.join(["python3", "bench/run.py", *(sys.argv[1:] if argv is None else argv)])
    run = run_description(args.project_dir, command)
    report = format_report(run, args.work_dir, prepared, rows, args.sizes, notes)
    print(report)
    if args.report:
        args.report.write_text(report)
    log(f"Benchmark finished in {time.perf_counter() - started:.0f} s; "
        f"logs are in {args.work_dir}/<size>/logs")


if __name__ == "__main__":
    main()
