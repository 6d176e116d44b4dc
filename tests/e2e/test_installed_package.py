"""chargewatch installed from its wheel (not editable), run from outside the source tree.

The wheel is built from a copy of the working tree with pip, as ``pip install .`` builds it, and
installed without dependencies into a fresh venv; the dependencies come from this test run's own
environment through a ``.pth`` line (that environment's ``.pth`` files, its editable chargewatch
among them, are not processed there), so the run needs no package index. Whatever a command reads
from the package (the Flux scripts, the console's templates and assets) must therefore be in the
wheel.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.e2e.harness import free_port, stopped_at_exit

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Installed:
    venv: Path
    home: Path  # the commands' working directory, outside the source tree

    def env(self, data_dir: Path, **extra: str) -> dict[str, str]:
        return {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", "HOME": str(self.home),
                "CHARGEWATCH_DATA_DIR": str(data_dir), **extra}

    def chargewatch(self, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "chargewatch"), *args], env=self.env(data_dir),
                              cwd=self.home, capture_output=True, text=True, timeout=120)


def _copy_working_tree(target: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    source, wheels, venv, home = root / "source", root / "wheels", root / "venv", root / "home"
    home.mkdir()
    _copy_working_tree(source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
                   check=True, timeout=600)
    [wheel] = wheels.glob("chargewatch-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, timeout=300)
    venv_site = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip()
    (Path(venv_site) / "chargewatch_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return Installed(venv, home)


def test_the_installed_package_is_the_one_that_runs(installed, tmp_path) -> None:
    where = subprocess.run([str(installed.venv / "bin" / "python"), "-c",
                            "import chargewatch.influx.flux as f; print(f.__file__)"],
                           env=installed.env(tmp_path), cwd=installed.home, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed.venv), where.stdout


def test_influx_setup_dry_run_prints_the_buckets_and_the_shipped_task(installed, tmp_path) -> None:
    result = installed.chargewatch(tmp_path, "influx", "setup", "--dry-run")

    assert result.returncode == 0, result.stderr
    assert "bucket telemetry: create if missing" in result.stdout
    assert "task efficiency: create or update with this Flux:" in result.stdout
    assert 'option task = {name: "efficiency"' in result.stdout


def test_run_serves_ingest_and_the_console_until_interrupted(installed, tmp_path) -> None:
    ingest_port, analytics_port = free_port(), free_port()
    env = installed.env(tmp_path, CHARGEWATCH_INGEST__PORT=str(ingest_port),
                        CHARGEWATCH_ANALYTICS__PORT=str(analytics_port))
    process = subprocess.Popen([str(installed.venv / "bin" / "chargewatch"), "run"], env=env, cwd=installed.home,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    with stopped_at_exit(process):
        ingest, analytics = f"http://127.0.0.1:{ingest_port}", f"http://127.0.0.1:{analytics_port}"
        deadline = time.monotonic() + 60
        while not (_answers(f"{ingest}/ready") and _answers(f"{analytics}/ready")):
            assert process.poll() is None and time.monotonic() < deadline, "the services never became ready"
            time.sleep(0.2)
        token = json.loads(installed.chargewatch(tmp_path, "tokens", "--json").stdout)["write"][0]
        posted = requests.post(f"{ingest}/v1/ingest", headers={"Authorization": f"Token {token}"}, timeout=10,
                               json={"meterId": "METER_001", "kwhConsumedAc": 1.0, "voltage": 230})
        assert posted.json()["stored"] == 1, posted.text
        sign_in = requests.get(f"{analytics}/console/sign-in", timeout=10)
        assert sign_in.status_code == 200 and "<form" in sign_in.text  # the shipped templates
        css = requests.get(f"{analytics}/console/static/console.css", timeout=10)
        assert css.status_code == 200 and css.text.strip()  # the shipped assets

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
