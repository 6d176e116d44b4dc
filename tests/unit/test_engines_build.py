"""tools/engines/build, run for real with a PATH the test controls: it reuses what the cache holds and
says clearly what is missing or what failed, before and while it builds."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.live.engines import pinned_versions

SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "engines" / "build"
TOOLS = ("bash", "dirname", "date", "mkdir", "grep", "cat", "tail", "mv", "chmod", "id", "env", "printf", "rm")
VERSIONS = pinned_versions()


def executable(path: Path, text: str) -> Path:
    path.write_text("#!/bin/bash\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def sandbox(tmp_path: Path) -> dict:
    """A bin directory with only the shell tools the script needs, and an empty engine cache."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    cache = tmp_path / "cache"
    return {"bin": bin_dir, "cache": cache, "tmp": tmp_path}


def run(sandbox: dict, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": str(sandbox["bin"]), "HOME": str(sandbox["tmp"]), "CHARGEWATCH_ENGINES_DIR": str(sandbox["cache"])}
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run([bash, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def fake_go(sandbox: dict, build_exit: int = 0) -> None:
    gopath = sandbox["tmp"] / "gopath"
    executable(sandbox["bin"] / "go", f"""
case "$1" in
    env) echo {gopath} ;;
    build) echo "flux/libflux: error[E0599]: no method named frobnicate found" >&2; exit {build_exit} ;;
    *) exit 0 ;;
esac
""")


def test_without_go_it_says_to_install_go_or_provide_the_binary(sandbox):
    result = run(sandbox)

    assert result.returncode == 1
    assert "engines: error: 'go' not found: install Go 1.23 or newer" in result.stderr
    assert f"influxd-{VERSIONS['INFLUXD_VERSION']}/influxd" in result.stderr


def test_without_cargo_it_names_the_rust_toolchain(sandbox):
    fake_go(sandbox)

    result = run(sandbox)

    assert result.returncode == 1
    assert "'cargo' not found: influxd's Flux engine is Rust: install a Rust toolchain with rustup" in result.stderr


def test_without_pkg_config_it_names_the_debian_package(sandbox):
    fake_go(sandbox)
    executable(sandbox["bin"] / "cargo", "exit 0\n")

    result = run(sandbox)

    assert result.returncode == 1
    assert "'pkg-config' not found: install it (Debian: apt-get install pkg-config)" in result.stderr


def test_a_compile_error_fails_with_the_tail_of_the_build_log(sandbox):
    fake_go(sandbox, build_exit=2)
    for tool in ("cargo", "pkg-config", "cc"):
        executable(sandbox["bin"] / tool, "exit 0\n")

    result = run(sandbox)

    assert result.returncode == 1
    assert "[1/4] pkg-config wrapper" in result.stderr  # progress, step by step
    assert "no method named frobnicate found" in result.stderr  # the compiler's own words
    log = sandbox["cache"] / "logs" / f"influxd-{VERSIONS['INFLUXD_VERSION']}.log"
    assert f"building influxd (a compile error is in the log) failed (whole log: {log})" in result.stderr
    assert not (sandbox["cache"] / f"influxd-{VERSIONS['INFLUXD_VERSION']}" / "influxd").exists()


def test_engines_in_the_cache_are_reused_without_building(sandbox):
    influxd_dir = sandbox["cache"] / f"influxd-{VERSIONS['INFLUXD_VERSION']}"
    telegraf_dir = sandbox["cache"] / f"telegraf-{VERSIONS['TELEGRAF_VERSION']}"
    influxd_dir.mkdir(parents=True)
    telegraf_dir.mkdir(parents=True)
    executable(influxd_dir / "influxd", f'echo "InfluxDB v{VERSIONS["INFLUXD_VERSION"]} (git: module) build_date: x"\n')
    executable(telegraf_dir / "telegraf", "echo Telegraf\n")
    (telegraf_dir / "plugins").write_text(VERSIONS["TELEGRAF_PLUGINS"] + "\n")
    executable(sandbox["bin"] / "prometheus-alertmanager", "exit 0\n")

    result = run(sandbox, "--print-env")

    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr
    assert "engines: all engines ready" in result.stderr
    assert result.stdout.splitlines() == [
        f"CHARGEWATCH_ENGINE_INFLUXD={influxd_dir / 'influxd'}",
        f"CHARGEWATCH_ENGINE_TELEGRAF={telegraf_dir / 'telegraf'}",
        f"CHARGEWATCH_ENGINE_ALERTMANAGER={sandbox['bin'] / 'prometheus-alertmanager'}",
    ]


def test_a_cached_influxd_of_another_version_is_rebuilt(sandbox):
    influxd_dir = sandbox["cache"] / f"influxd-{VERSIONS['INFLUXD_VERSION']}"
    influxd_dir.mkdir(parents=True)
    executable(influxd_dir / "influxd", 'echo "InfluxDB dev (git: none) build_date: x"\n')

    result = run(sandbox)  # no go here: the rebuild is attempted and says why it cannot

    assert result.returncode == 1
    assert "'go' not found" in result.stderr
    assert os.access(influxd_dir / "influxd", os.X_OK)  # the old binary is left until a build succeeds
