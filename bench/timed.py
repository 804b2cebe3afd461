"""Run one command, wait for it, and print its wall time, peak RSS and CPU time.

The benchmark starts a fresh copy of this wrapper per measurement because
`getrusage(RUSAGE_CHILDREN).ru_maxrss` is the maximum over every child a process
has waited for. Here the only child is the measured command, so the figure is its
peak RSS, or that of the largest process it waited for (gzip under tar, say).

NOTE: Linux counts the RSS of the forking process in a child's peak until the
child calls exec, so no figure is below this wrapper's own RSS (about 7 MiB with
`python3 -I -S` on Python 3.11). The wrapper imports only what it needs for that
reason.

Usage: python3 -I -S timed.py TIMEOUT_SECONDS LOG_FILE COMMAND [ARG ...]
The command's stdout and stderr go to LOG_FILE. The result goes to stdout as
`returncode wall_seconds maxrss_kib cpu_seconds timed_out`, where cpu_seconds is
the user plus system time of the command and of the children it waited for.
A command still running after TIMEOUT_SECONDS is killed with its process group
(returncode -9, timed_out 1).
"""

import os
import resource
import signal
import sys
import time


def main():
    timeout, log_path, command = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)

    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.dup2(null_fd, 0)
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.execvp(command[0], command)
        except OSError as exc:
            os.write(2, f"cannot run {command[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    # The command has its own process group, so a timeout can kill all of it. The
    # group gets no signal from the terminal, so Ctrl-C and SIGTERM are passed on.
    os.setpgid(pid, pid)
    timed_out = []

    def kill_on_timeout(signum, frame):
        timed_out.append(True)
        os.killpg(pid, signal.SIGKILL)

    def forward(signum, frame):
        os.killpg(pid, signum)

    signal.signal(signal.SIGALRM, kill_on_timeout)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    signal.alarm(timeout)
    _, status = os.waitpid(pid, 0)
    wall = time.perf_counter() - started
    signal.alarm(0)

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # ru_maxrss is in KiB on Linux.
    cpu = usage.ru_utime + usage.ru_stime
    print(os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss, cpu, int(bool(timed_out)))


if __name__ == "__main__":
    main()
