"""Shared machinery for the benchmarks: servers on 127.0.0.1, wrk runs, CPU accounting, JSON out.

Every process a benchmark starts (gunicorn masters, wrk) runs in its own session (process group)
and is registered here; :func:`cleanup` stops them all by process group, and runs on normal exit,
on exceptions, on Ctrl-C and on SIGTERM, so a failed benchmark never leaves a server behind.
All load is bounded in time (wrk ``-d``) and only ever aimed at 127.0.0.1.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import platform
import resource
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
LUA_DIR = BENCH_DIR / "lua"
HOST = "127.0.0.1"  # the only address any benchmark talks to
WRK = os.environ.get("WRK", "/usr/bin/wrk")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WRK_JSON_MARKER = "WRKJSON "

_started: list[subprocess.Popen] = []


# -- process lifetime ------------------------------------------------------------------------

# What spawn() and _stop_group() know of each process (Popen takes no attributes of ours).
_grace_seconds: weakref.WeakKeyDictionary[subprocess.Popen[Any], float] = weakref.WeakKeyDictionary()
_stopped: weakref.WeakSet[subprocess.Popen[Any]] = weakref.WeakSet()


def _stop_group(process: subprocess.Popen, grace_seconds: float = 30.0) -> None:
    """SIGTERM the process (gunicorn: graceful stop), then SIGKILL whatever is left of its group.

    The group is signalled only while its leader is known not to have been reaped before this
    call, so a process-group id that the kernel may since have reused is never signalled.
    """
    if process in _stopped:
        return
    _stopped.add(process)
    if process.poll() is not None:
        return  # exited and reaped earlier (wrk after its run, a server that failed to start)
    pgid = process.pid  # started with start_new_session=True, so pgid == pid
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(pgid, signal.SIGKILL)  # the leader is still unreaped, so the group is ours
        except (ProcessLookupError, PermissionError):
            process.kill()  # not a group leader after all (started without a new session)
        process.wait(timeout=10)
        return
    try:
        os.killpg(pgid, signal.SIGKILL)  # stragglers (e.g. workers) keep the group id reserved
    except (ProcessLookupError, PermissionError):
        pass


def stop(process: subprocess.Popen | None) -> None:
    if process is None:
        return
    _stop_group(process, _grace_seconds.get(process, 30.0))
    if process in _started:
        _started.remove(process)


def cleanup() -> None:
    """Stop every process this benchmark started, newest first."""
    while _started:
        stop(_started[-1])


def _on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through finally blocks, then atexit runs cleanup()


atexit.register(cleanup)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGHUP, _on_signal)


def spawn(argv: Sequence[str], *, env: dict[str, str] | None = None, log_path: Path | None = None,
          capture: bool = False, show_stderr: bool = False, grace_seconds: float = 30.0,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start a process in its own session and register it for cleanup.

    Output goes to ``log_path`` (appended), or to pipes with ``capture``, else nowhere; with
    ``show_stderr`` its stderr goes to ours (progress of a child benchmark). On stop it gets
    SIGTERM and ``grace_seconds`` to exit before its process group is killed.
    """
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "ab")) if log_path and not capture else None
        if capture:
            out: Any = subprocess.PIPE
            err: Any = subprocess.PIPE
        else:
            out = log or subprocess.DEVNULL
            err = None if show_stderr else out
        process = subprocess.Popen(list(argv), env=env, start_new_session=True, stdout=out, stderr=err, cwd=cwd)
    _grace_seconds[process] = grace_seconds
    _started.append(process)
    return process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (gunicorn workers of a master)."""
    children: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                children.extend(int(p) for p in handle.read().split())
    except FileNotFoundError:
        pass
    return sorted(set(children))


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the given processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return total / CLOCK_TICKS


def machine_cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def background_cores(seconds: float = 1.0) -> float:
    """Cores busy on the machine right now (before a benchmark starts anything: other users' load)."""
    busy_before, total_before = machine_cpu_times()
    time.sleep(seconds)
    busy_after, total_after = machine_cpu_times()
    return round((os.cpu_count() or 1) * (busy_after - busy_before) / max(1, total_after - total_before), 2)


def wait_for_idle(max_wait_seconds: float, threshold_cores: float = 0.2) -> float:
    """Wait (up to ``max_wait_seconds``) until other jobs use less than ``threshold_cores``."""
    deadline = time.monotonic() + max_wait_seconds
    busy = background_cores()
    while busy >= threshold_cores and time.monotonic() < deadline:
        busy = background_cores(2.0)
    return busy


def memory_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process in MiB."""
    result: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                result[key] = round(int(value.split()[0]) / 1024, 1)  # kB -> MiB
    return result


# -- servers -----------------------------------------------------------------------------------

@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path
    data_dir: Path | None = None
    write_token: str = ""
    read_token: str = ""
    gunicorn_options: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pids(self) -> list[int]:
        """The master and its workers."""
        return [self.process.pid, *child_pids(self.process.pid)]

    def workers(self) -> list[int]:
        return child_pids(self.process.pid)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop(self.process)


def wait_until_answering(server: Server, path: str = "/", timeout_seconds: float = 60.0) -> None:
    """Wait until an HTTP request gets any answer and all workers are forked."""
    deadline = time.monotonic() + timeout_seconds
    expected_workers = int(server.gunicorn_options.get("workers", 1))
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            urllib.request.urlopen(server.url + path, timeout=2).close()
            answered = True
        except urllib.error.HTTPError:
            answered = True  # 404/405 is an answer
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            answered = False
        if answered and len(server.workers()) >= expected_workers:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} did not answer within {timeout_seconds} s:\n{server.log_tail()}")


def make_data_dir(prefix: str) -> Path:
    """A fresh temporary data directory (on the same disk as /tmp, so fsync is real)."""
    return Path(tempfile.mkdtemp(prefix=f"chargewatch-bench-{prefix}-"))


def chargewatch_options(workers: int | None, threads: int | None, port: int) -> dict[str, Any]:
    """The gunicorn options ``chargewatch serve ingest`` uses, from chargewatch.cli itself."""
    from chargewatch.cli import gunicorn_options
    from chargewatch.settings import ServiceSettings, Settings

    service: dict[str, Any] = {"host": HOST, "port": port}
    if workers:
        service["workers"] = workers
    if threads:
        service["threads"] = threads
    settings = Settings(ingest=ServiceSettings(**service), log_level="WARNING")
    return gunicorn_options(settings, "ingest", HOST, port)


def start_chargewatch(data_dir: Path, *, workers: int | None = None, threads: int | None = None,
                      synchronous: str = "full", extra_env: dict[str, str] | None = None,
                      source_dir: Path | None = None) -> Server:
    """``python -m chargewatch serve ingest`` on 127.0.0.1 with a fresh pair of tokens.

    ``source_dir``: run the chargewatch of another checkout (say, ``git worktree add /tmp/before
    <commit>``) for before/after figures; its packages come first on the path.
    """
    port = free_port()
    options = chargewatch_options(workers, threads, port)
    write_token, read_token = "bench-w-" + secrets.token_hex(8), "bench-r-" + secrets.token_hex(8)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGEWATCH_")}
    env.update({
        "CHARGEWATCH_DATA_DIR": str(data_dir),
        "CHARGEWATCH_INGEST__HOST": HOST,
        "CHARGEWATCH_INGEST__PORT": str(port),
        "CHARGEWATCH_INGEST__WORKERS": str(options["workers"]),
        "CHARGEWATCH_INGEST__THREADS": str(options["threads"]),
        "CHARGEWATCH_AUTH__WRITE_TOKENS": write_token,
        "CHARGEWATCH_AUTH__READ_TOKENS": read_token,
        "CHARGEWATCH_SQLITE__SYNCHRONOUS": synchronous,
        "CHARGEWATCH_LOG_LEVEL": "WARNING",
    })
    env.update(extra_env or {})
    if source_dir is not None:
        env["PYTHONPATH"] = str(source_dir)
    log_path = data_dir / "server.log"
    process = spawn([sys.executable, "-m", "chargewatch", "serve", "ingest"], env=env, log_path=log_path,
                    cwd=source_dir)
    server = Server("chargewatch", process, port, log_path, data_dir, write_token, read_token,
                    _printable(options))
    wait_until_answering(server, "/health")
    return server


# gunicorn option name -> command-line flag; an option chargewatch adds that is not mapped here
# fails the benchmark instead of silently making the comparison unequal.
_GUNICORN_FLAGS = {
    "bind": "--bind", "workers": "--workers", "worker_class": "--worker-class", "threads": "--threads",
    "keepalive": "--keep-alive", "timeout": "--timeout", "graceful_timeout": "--graceful-timeout",
    "loglevel": "--log-level", "limit_request_line": "--limit-request-line",
    "limit_request_fields": "--limit-request-fields", "limit_request_field_size": "--limit-request-field_size",
}
# Not mapped, on purpose: proc_name (a label), accesslog None (gunicorn's default: no access log),
# child_exit (chargewatch's prometheus clean-up hook; the bare app has no metrics), post_worker_init
# (connects an ingest worker to the SQLite store's writer at boot; the bare app has no store).
_GUNICORN_IGNORED = {"proc_name", "accesslog", "child_exit", "post_worker_init"}


def gunicorn_flags(options: dict[str, Any]) -> list[str]:
    unknown = set(options) - set(_GUNICORN_FLAGS) - _GUNICORN_IGNORED
    if unknown:
        raise RuntimeError(f"chargewatch.cli.gunicorn_options has options the benchmark does not map: {unknown}")
    flags: list[str] = []
    for key, flag in _GUNICORN_FLAGS.items():
        if key in options:
            flags += [flag, str(options[key])]
    if options.get("accesslog"):
        flags += ["--access-logfile", str(options["accesslog"])]
    return flags


def start_bare_flask(options: dict[str, Any], log_dir: Path) -> Server:
    """benchmarks/bare_flask.py under ``python -m gunicorn`` with chargewatch's options."""
    port = free_port()
    options = {**options, "bind": f"{HOST}:{port}"}
    argv = [sys.executable, "-m", "gunicorn", *gunicorn_flags(options), "--name", "bench-bare-flask",
            "--chdir", str(BENCH_DIR), "bare_flask:create_app()"]
    log_path = log_dir / "bare_flask.log"
    process = spawn(argv, log_path=log_path)
    server = Server("bare_flask", process, port, log_path, gunicorn_options=_printable(options))
    wait_until_answering(server, "/")
    return server


def _printable(options: dict[str, Any]) -> dict[str, Any]:
    # The worker class is a class object (webapi.worker.worker_class); its importable base has the
    # same guards with the default request timeout.
    options = {k: f"{v.__module__}.{v.__name__}" if isinstance(v, type) else v for k, v in options.items()}
    return {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool)) or v is None}


# -- wrk -----------------------------------------------------------------------------------------

@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    server_cpu_s: float = 0.0
    wrk_cpu_s: float = 0.0
    machine_busy_pct: float = 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        """Socket errors, timeouts and non-2xx responses (wrk's own 'status' is >399, a subset)."""
        e = self.errors
        return e["connect"] + e["read"] + e["write"] + e["timeout"] + e["non2xx"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "requests_per_s": round(self.requests_per_s, 1),
            "errors": self.errors,
            "error_count": self.error_count,
            "latency_us": self.latency_us,
            "cpu": {
                "server_cpu_s": round(self.server_cpu_s, 2),
                "wrk_cpu_s": round(self.wrk_cpu_s, 2),
                "server_cores": round(self.server_cpu_s / self.duration_s, 2) if self.duration_s else None,
                "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / self.requests, 3)
                if self.requests else None,
                "wrk_cores": round(self.wrk_cpu_s / self.duration_s, 2) if self.duration_s else None,
                "machine_busy_pct": round(self.machine_busy_pct, 1),
                # CPU used by anything else on the machine during the run (other users' jobs):
                # when this is not ~0, the run was disturbed and its figures are too low.
                "other_cores": round(self.machine_busy_pct / 100 * (os.cpu_count() or 1)
                                     - (self.server_cpu_s + self.wrk_cpu_s) / self.duration_s, 2)
                if self.duration_s else None,
            },
        }


def lua_script(scenario: str, work_dir: Path) -> Path:
    """benchmarks/lua/common.lua (setup/response/done) followed by the scenario's request()."""
    text = (LUA_DIR / "common.lua").read_text() + "\n" + (LUA_DIR / f"{scenario}.lua").read_text()
    path = work_dir / f"wrk_{scenario}.lua"
    path.write_text(text)
    return path


def wait_for_closed_connections(port: int, timeout_s: float = 10.0) -> None:
    """Until the server on ``port`` holds no connection of an earlier run (kept-alive, or closed by
    the client while its request is still being handled), so that a run starts from a server whose
    workers hold none: they share out a run's connections by the counts they hold."""
    tcp = Path("/proc/net/tcp")
    if not tcp.exists():
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        held = 0
        for line in tcp.read_text().splitlines()[1:]:
            fields = line.split()
            # 01 established, 08 close-wait (the client has gone, the server has not closed yet)
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in ("01", "08"):
                held += 1
        if not held:
            return
        time.sleep(0.05)


def run_wrk(url: str, script: Path, *, duration_s: float, connections: int, threads: int = 2,
            timeout_s: float = 5.0, args: Sequence[str] = (), server: Server | None = None,
            after_closed: bool = True) -> WrkResult:
    """One time-bounded wrk run against a 127.0.0.1 URL; CPU of wrk and the server is accounted.

    ``after_closed``: first wait until the server holds no connection of an earlier run (off where
    the benchmark holds connections of its own meanwhile)."""
    if not url.startswith(f"http://{HOST}:"):
        raise ValueError(f"benchmarks only target {HOST}, not {url}")
    # wrk takes whole seconds only (no fractions, no ms unit).
    argv = [WRK, f"-t{threads}", f"-c{max(connections, threads)}", f"-d{max(1, round(duration_s))}s",
            "--timeout", f"{max(1, round(timeout_s))}s", "-s", str(script), url, *args]
    if after_closed:
        wait_for_closed_connections(int(url.split(":")[2].split("/")[0]))
    server_pids = server.pids if server else []
    server_cpu_before = cpu_seconds(server_pids)
    busy_before, total_before = machine_cpu_times()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = spawn(argv, capture=True)
    try:
        stdout, stderr = process.communicate(timeout=duration_s + timeout_s + 60)
    finally:
        stop(process)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after, total_after = machine_cpu_times()
    server_cpu = cpu_seconds(server_pids) - server_cpu_before
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime
               - children_before.ru_utime - children_before.ru_stime)
    text = stdout.decode(errors="replace")
    line = next((row for row in text.splitlines() if row.startswith(WRK_JSON_MARKER)), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({process.returncode}): {text}\n{stderr.decode(errors='replace')}")
    data = json.loads(line[len(WRK_JSON_MARKER):])
    return WrkResult(
        requests=int(data["requests"]),
        duration_s=data["duration_us"] / 1e6,
        errors={k: int(v) for k, v in data["errors"].items()},
        latency_us=data["latency_us"],
        server_cpu_s=server_cpu,
        wrk_cpu_s=wrk_cpu,
        machine_busy_pct=100.0 * (busy_after - busy_before) / max(1, total_after - total_before),
    )


def median_result(runs: Sequence[WrkResult]) -> dict[str, Any]:
    """Medians over repeats: req/s and each latency percentile separately; errors are summed."""
    errors: dict[str, int] = {}
    for run in runs:
        for key, value in run.errors.items():
            errors[key] = errors.get(key, 0) + value
    latency = {key: statistics.median(run.latency_us[key] for run in runs) for key in runs[0].latency_us}
    return {
        "requests_per_s": round(statistics.median(run.requests_per_s for run in runs), 1),
        "requests_per_s_runs": [round(run.requests_per_s, 1) for run in runs],
        # CPU the server spent per request: unlike req/s, barely affected by other jobs' load.
        "server_cpu_ms_per_request": round(statistics.median(
            1000 * run.server_cpu_s / run.requests for run in runs if run.requests), 3)
        if any(run.requests for run in runs) else None,
        "latency_us": latency,
        "latency_ms": {key: round(value / 1000, 3) for key, value in latency.items()},
        "errors": errors,
        "error_count": sum(run.error_count for run in runs),
        "runs": [run.as_dict() for run in runs],
    }


# -- reporting -----------------------------------------------------------------------------------

def base_parser(description: str, default_duration: float = 10.0) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=default_duration,
                        help="seconds per measured wrk run (default %(default)s)")
    parser.add_argument("--output", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the temporary data directories (server logs, SQLite files)")
    return parser


def add_source_argument(parser: argparse.ArgumentParser) -> None:
    """``--source DIR``: run another checkout's chargewatch (before/after figures in one sitting)."""
    parser.add_argument("--source", type=Path, help="checkout whose chargewatch to run (default: this one)")


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            model = next((row.split(":", 1)[1].strip() for row in handle if row.startswith("model name")), "")
    except OSError:
        pass
    wrk_version = subprocess.run([WRK, "--version"], capture_output=True, text=True).stdout.splitlines()
    return {
        "cpus_online": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": wrk_version[0] if wrk_version else "",
        # Load from other jobs on this (shared) machine just before the benchmark started.
        "background_cores_at_start": background_cores(),
    }


CPU_SHARING_NOTE = (
    "wrk and the server run on the same machine ({cpus} usable cores), so wrk's CPU (see cpu.wrk_cores) "
    "is taken from the server: figures are a lower bound of what the server does on dedicated cores."
)


def disturbance_notes(result: dict[str, Any]) -> list[str]:
    """Warn when other jobs used CPU during the benchmark (figures are then too low)."""
    notes = []
    background = result.get("machine", {}).get("background_cores_at_start", 0)
    if background > 0.2:
        notes.append(f"WARNING: {background} cores were busy with other jobs when the benchmark started.")
    others = [run["cpu"]["other_cores"] for run in _all_runs(result)
              if run.get("cpu", {}).get("other_cores") is not None]
    if others and max(others) > 0.2:
        notes.append(f"WARNING: other jobs used up to {max(others)} cores during wrk runs "
                     "(cpu.other_cores); those runs understate the server.")
    return notes


def _all_runs(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = list(node["runs"]) if isinstance(node.get("runs"), list) else []
        for key, value in node.items():
            if key != "runs":
                found.extend(_all_runs(value))
        return found
    if isinstance(node, list):
        return [run for item in node for run in _all_runs(item)]
    return []


def emit(result: dict[str, Any], output: Path | None) -> None:
    """Print the JSON result and write it to ``output``."""
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


def remove_data_dir(path: Path | None, keep: bool) -> None:
    import shutil

    if path is not None and not keep:
        shutil.rmtree(path, ignore_errors=True)


def count_rows(db_path: Path, table_glob: str) -> int:
    """Rows across the tables matching ``table_glob`` (read-only; server stopped or WAL reader)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        tables = [n for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name GLOB ?", (table_glob,))]
        return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    finally:
        conn.close()


def run_tag() -> str:
    """A short random tag that makes device ids unique across runs against one database."""
    return secrets.token_hex(3)
