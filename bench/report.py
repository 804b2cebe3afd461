"""Format the benchmark's machine description, tables and target checks as markdown."""

import os
import platform
import re
import subprocess
import time
import zlib
from pathlib import Path

from make_models import MiB

THREADS = len(os.sched_getaffinity(0))

VARIANTS = {
    "floor": "inflate floor",
    "repack": "repack",
    "recompress-1": "repack --recompress --threads 1",
    "recompress-all": f"repack --recompress --threads {THREADS}",
    "naive": "naive: extract, tarfile w:gz",
    "tar": "tar xzf, then tar czf",
}
ENGINE_VARIANTS = ("repack", "recompress-1", "recompress-all")

# Targets for the repack on a 2-core machine, explained in docs/benchmarks.md.
MAX_FLOOR_RATIO = 1.15
FIRST_STEP_FLOOR_RATIO = 1.3
FLOOR_RATIO_ARCHIVES = ("gnu-tar", "tarfile", "pigz")
FLOOR_RATIO_SIZE = "1G"
MIN_THREAD_SPEEDUP = 1.8
MAX_RSS_MIB = 64

# Above this many CPUs used by other processes during a run, its time is unreliable.
NOISY_OTHER_CPUS = 0.25


def tool_version(command):
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError:
        return f"{command[0]}: not installed"
    lines = (result.stdout or result.stderr).splitlines()
    return lines[0].strip() if lines else f"{command[0]}: unknown version"


def cpu_model():
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_total():
    with open("/proc/meminfo", encoding="utf-8") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    return "unknown"


def disk_description(path):
    result = subprocess.run(["df", "-hT", str(path)], capture_output=True, text=True,
                            check=False)
    lines = result.stdout.splitlines()
    fields = lines[-1].split() if result.returncode == 0 and lines else []
    if len(fields) < 7:
        return "unknown"
    device, fstype, size = fields[0], fields[1], fields[2]
    rotational = Path(f"/sys/block/{Path(device).name}/queue/rotational")
    kind = ""
    if rotational.exists():
        flag = rotational.read_text().strip()
        kind = f", kernel reports rotational={flag}"
    return f"{device} ({fstype}, {size}{kind})"


def machine_description(work_dir):
    return [
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, "
        f"{THREADS} available to the process",
        f"- Memory: {memory_total()}",
        f"- Disk of the work folder: {disk_description(work_dir)}",
        f"- OS: {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, zlib {zlib.ZLIB_RUNTIME_VERSION}",
        f"- {tool_version(['tar', '--version'])}; {tool_version(['gzip', '--version'])}; "
        f"{tool_version(['pigz', '--version'])}",
    ]


def engine_revision(project_dir):
    """Return the repository's commit and whether the engine's files have local changes."""
    def git(*arguments):
        result = subprocess.run(["git", "-C", str(project_dir), *arguments],
                                capture_output=True, text=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "app", "entrypoint.py")
    return f"{commit} with uncommitted changes to the engine" if changed else commit


def run_description(project_dir, command):
    return [f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"- Command: `{command}`",
            f"- Engine: {project_dir / 'entrypoint.py'} at commit {engine_revision(project_dir)}"]


def gzip_members(row):
    match = re.search(r"gzip members: (\d+)", row.get("floor_output", ""))
    return match.group(1) if match else "-"


def format_archives(prepared, rows):
    members = {(r["size"], r["archive"]): gzip_members(r) for r in rows
               if r["variant"] == "floor"}
    lines = ["| size | archive | model MiB | archive MiB | gzip members |",
             "|---|---|---:|---:|---:|"]
    for size, (manifest, archives) in prepared.items():
        for kind, path in archives.items():
            lines.append(f"| {size} | {kind} | {manifest['model_bytes'] / MiB:.1f} | "
                         f"{path.stat().st_size / MiB:.1f} | {members.get((size, kind), '-')} |")
    return lines


def format_results(rows):
    floors = {(r["size"], r["archive"]): r["wall_s"] for r in rows if r["variant"] == "floor"}
    lines = ["| size | archive | variant | runs | wall s | x floor | CPU s | others' CPUs "
             "| peak RSS MiB | check |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        floor = floors.get((row["size"], row["archive"]))
        ratio = f"{row['wall_s'] / floor:.2f}" if floor else "-"
        lines.append(f"| {row['size']} | {row['archive']} | {VARIANTS[row['variant']]} | "
                     f"{row['runs']} | {row['wall_s']:.2f} | {ratio} | {row['cpu_s']:.2f} | "
                     f"{row['other_cpus']:.2f} | {row['rss_mib']:.1f} | {row['check']} |")
    return lines


def find_row(rows, size, kind, variant):
    for row in rows:
        if (row["size"], row["archive"], row["variant"]) == (size, kind, variant):
            return row
    return None


def floor_ratio_target(rows):
    name = (f"repack <= {MAX_FLOOR_RATIO} x floor on the {FLOOR_RATIO_SIZE} "
            f"{', '.join(FLOOR_RATIO_ARCHIVES)} archives "
            f"({FIRST_STEP_FLOOR_RATIO} as a first step)")
    ratios = []
    for kind in FLOOR_RATIO_ARCHIVES:
        floor = find_row(rows, FLOOR_RATIO_SIZE, kind, "floor")
        repack = find_row(rows, FLOOR_RATIO_SIZE, kind, "repack")
        if floor and repack and repack["check"] in ("PASS", "-"):
            ratios.append((repack["wall_s"] / floor["wall_s"], kind))
    if len(ratios) < len(FLOOR_RATIO_ARCHIVES):
        return name, "not measured, or an output failed its checks", "-"
    worst = max(ratios)[0]
    figures = ", ".join(f"{kind} {ratio:.2f}" for ratio, kind in ratios)
    if worst <= MAX_FLOOR_RATIO:
        return name, figures, "met"
    if worst <= FIRST_STEP_FLOOR_RATIO:
        return name, figures, "first step met"
    return name, figures, "not met"


def thread_speedup_target(rows):
    name = f"recompress with {THREADS} threads >= {MIN_THREAD_SPEEDUP} x faster than with 1"
    if THREADS < 2:
        return name, "one CPU available, so it cannot be measured", "-"
    speedups = []
    for single in rows:
        if single["variant"] != "recompress-1" or single["check"] not in ("PASS", "-"):
            continue
        multi = find_row(rows, single["size"], single["archive"], "recompress-all")
        if multi and multi["check"] in ("PASS", "-"):
            where = f"{single['size']} {single['archive']}"
            speedups.append((single["wall_s"] / multi["wall_s"], where))
    if not speedups:
        return name, "not measured", "-"
    lowest, where = min(speedups)
    status = "met" if lowest >= MIN_THREAD_SPEEDUP else "not met"
    return name, f"lowest {lowest:.2f} ({where}), highest {max(speedups)[0]:.2f}", status


def rss_target(rows, sizes):
    name = f"peak RSS <= {MAX_RSS_MIB} MiB in every engine run, at every size"
    figures, status = [], "met"
    for size in sizes:
        peaks = [r["rss_mib"] for r in rows
                 if r["size"] == size and r["variant"] in ENGINE_VARIANTS]
        if peaks:
            figures.append(f"{size}: max {max(peaks):.1f} MiB")
            if max(peaks) > MAX_RSS_MIB:
                status = "not met"
    if not figures:
        return name, "not measured", "-"
    return name, ", ".join(figures), status


def checks_target(rows):
    name = "every engine output passes gzip -t, tar tzf, tarfile and byte checks"
    checked = [r for r in rows if r["variant"] in ENGINE_VARIANTS and r["check"] != "-"]
    if not checked:
        return name, "not checked", "-"
    passed = sum(r["check"] == "PASS" for r in checked)
    return name, f"{passed} of {len(checked)} pass", "met" if passed == len(checked) else "not met"


def format_targets(rows, sizes):
    targets = [floor_ratio_target(rows), thread_speedup_target(rows), rss_target(rows, sizes),
               checks_target(rows)]
    lines = ["| target | measured | status |", "|---|---|---|"]
    lines += [f"| {name} | {figures} | {status} |" for name, figures, status in targets]
    return lines


def format_noise(rows):
    noisy = [r for r in rows if r["other_cpus"] > NOISY_OTHER_CPUS]
    if not noisy:
        return []
    return [f"- Other processes used more than {NOISY_OTHER_CPUS} CPUs during {len(noisy)} of "
            f"{len(rows)} results (see the others' CPUs column), so those times are not "
            "reliable. Rerun on an idle machine."]


def format_path_lines(rows):
    return [f"- {r['size']} {r['archive']}: `{r['path_lines'][0].strip()}`"
            for r in rows if r["variant"] == "repack" and r["path_lines"]]


def format_report(run, work_dir, prepared, rows, sizes, notes):
    """Return the whole markdown report as one string. run is from run_description."""
    report = ["## Run", "", *run, "", "## Machine", "", *machine_description(work_dir), "",
              "## Archives", "", *format_archives(prepared, rows), "",
              "## Results", "",
              "Wall time is the fastest of the runs and peak RSS the largest; CPU s and "
              "others' CPUs belong to the fastest run. Every archive was read once before its "
              "runs, so all of them see a warm page cache.", "",
              *format_results(rows), "", "## Targets", "", *format_targets(rows, sizes)]
    path_lines = format_path_lines(rows)
    if path_lines:
        report += ["", "## Path the engine took (first log line naming it)", "", *path_lines]
    notes = [*notes, *format_noise(rows)]
    if notes:
        report += ["", "## Notes", "", *notes]
    return "\n".join(report) + "\n"
