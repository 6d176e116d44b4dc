"""The Flux type check for tests: ``tools/fluxcheck`` (Node.js + the Flux compiler's WASM build).

Use the ``flux_checker`` fixture (``tests/conftest.py`` makes it available everywhere)::

    def test_x(flux_checker):
        [result] = flux_checker.check({"name": "q", "source": "..."})
        assert result.valid, result.describe()

The fixture installs the checker's pinned npm package (``npm ci --prefix tools/fluxcheck``) once
when ``node_modules`` is missing, so the README's single test command needs no extra step. It
skips only when ``node`` is not on PATH; a failed install or a broken checker fails the tests, so
CI cannot pass by skipping.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL_DIR = REPO / "tools" / "fluxcheck"
WASM = TOOL_DIR / "node_modules" / "@influxdata" / "flux-lsp-browser" / "flux-lsp-browser_bg.wasm"
MIN_NODE = (20, 6)  # module.register(), which loads the WASM build (tools/fluxcheck/wasm-hooks.mjs)
CHECK_TIMEOUT_SECONDS = 120


@dataclass(frozen=True)
class FluxCheckResult:
    name: str
    valid: bool
    errors: list[dict[str, Any]] = field(default_factory=list)
    declared: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{self.name}: {'valid' if self.valid else 'INVALID'}"]
        lines += [f"  {e['line']}:{e['column']}: {e['message']}" for e in self.errors]
        if self.declared:
            lines.append(f"  (declared for the check: {'; '.join(self.declared)})")
        return "\n".join(lines)


class FluxChecker:
    """Runs ``node tools/fluxcheck/check.mjs`` on sources; one node process per call."""

    def __init__(self, node: str) -> None:
        self.node = node

    def check(self, *items: dict[str, Any]) -> list[FluxCheckResult]:
        """Check ``{"name", "source"[, "declarations"]}`` items; results in the same order."""
        completed = subprocess.run(
            [self.node, str(TOOL_DIR / "check.mjs")], input=json.dumps(list(items)), capture_output=True,
            text=True, timeout=CHECK_TIMEOUT_SECONDS, check=False,
        )
        if completed.returncode not in (0, 1):
            raise RuntimeError(f"fluxcheck failed (status {completed.returncode}): {completed.stderr.strip()}")
        answer = json.loads(completed.stdout)
        results = [FluxCheckResult(r["name"], r["valid"], r["errors"], r["declared"]) for r in answer["results"]]
        if (completed.returncode == 0) != all(r.valid for r in results):
            raise RuntimeError(f"fluxcheck's exit status {completed.returncode} contradicts its results")
        return results

    def check_files(self, paths: list[Path]) -> list[FluxCheckResult]:
        return self.check(*({"name": str(p.relative_to(REPO)), "source": p.read_text()} for p in paths))


def node_version(node: str) -> tuple[int, ...]:
    text = subprocess.run([node, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def ensure_installed() -> None:
    """``npm ci`` the checker's lock-pinned dependencies unless they are there; raises on failure."""
    if WASM.exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is missing: cannot install tools/fluxcheck (run `npm ci --prefix tools/fluxcheck`)")
    # One installer at a time across processes (pytest-xdist workers, parallel runs).
    lock_path = Path(tempfile.gettempdir()) / f"chargewatch-fluxcheck-{os.getuid()}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if WASM.exists():
            return
        completed = subprocess.run(
            [npm, "ci", "--prefix", str(TOOL_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True, text=True, timeout=600, check=False,
        )
        if completed.returncode != 0 or not WASM.exists():
            raise RuntimeError(f"`npm ci --prefix tools/fluxcheck` failed ({completed.returncode}): "
                               f"{completed.stderr.strip() or completed.stdout.strip()}")


@pytest.fixture(scope="session")
def flux_checker() -> FluxChecker:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Flux type check runs the Flux compiler's WASM build under "
                    f"Node.js >= {'.'.join(map(str, MIN_NODE))} (tools/fluxcheck)")
    version = node_version(node)
    if version[:2] < MIN_NODE:
        pytest.fail(f"node {'.'.join(map(str, version))} is too old for tools/fluxcheck: "
                    f"it needs >= {'.'.join(map(str, MIN_NODE))}")
    try:
        ensure_installed()
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        pytest.fail(str(err))
    return FluxChecker(node)
