"""The repository stands on its own: no tracked file points at notes outside it, every relative link
of README.md and docs/*.md reaches a file (and heading) of the repository, and every citation of a
docs section (``docs/alerts.md "The rules"``) names a heading that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()

# Pointers at the team's notes that lived beside the repository (a user has none of them), and the
# old form of citing them.
OUTSIDE_POINTERS = ("../shared", "shared/DESIGN", "shared/STYLE", "shared/reference", 'DESIGN "')

# Being rewritten on another branch (the InfluxDB stand-ins); they still cite the notes. Each entry
# must still hold a pointer: once the rewrite has dropped it, remove the entry (a test says so).
PENDING_REWRITE: frozenset[str] = frozenset()

_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.DOTALL)
_INLINE_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_CITATION = re.compile(r"\b(docs/[\w.-]+\.md)\s+\"([^\"\n]+)\"")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def tracked_files() -> list[str]:
    try:
        result = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout, so there is no list of tracked files: {err}")
    return sorted(name for name in result.stdout.decode().split("\0") if name)


def outside_pointers(root: Path, names: list[str]) -> dict[str, list[str]]:
    """{file: [line numbers and text of each line that points outside the repository]}."""
    found: dict[str, list[str]] = {}
    needles = [p.encode() for p in OUTSIDE_POINTERS]
    for name in names:
        path = root / name
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        data = path.read_bytes()
        if not any(needle in data for needle in needles):
            continue
        lines = data.decode("utf-8", errors="replace").splitlines()
        found[name] = [f"{number}: {line.strip()}" for number, line in enumerate(lines, 1)
                       if any(p in line for p in OUTSIDE_POINTERS)]
    return found


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(markdown: str) -> list[str]:
    return [h.replace("`", "") for h in _HEADING.findall(_FENCE.sub("", markdown))]


def link_targets(markdown: str) -> list[str]:
    """Link targets of a Markdown text, leaving out code blocks and code spans."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    return _INLINE_LINK.findall(text) + _REFERENCE_LINK.findall(text)


def broken_links(root: Path, markdown_file: Path) -> list[str]:
    """Relative links of ``markdown_file`` that leave ``root``, reach nothing, or name a missing heading."""
    problems = []
    for target in link_targets(markdown_file.read_text()):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # a web address
        path_part, _, anchor = target.partition("#")
        resolved = (markdown_file.parent / path_part).resolve() if path_part else markdown_file.resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in {slug(h) for h in headings(resolved.read_text())}:
            problems.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root.resolve())}")
    return problems


def broken_citations(root: Path, names: list[str]) -> list[str]:
    """``docs/x.md "Section"`` citations whose file is missing or has no heading containing Section."""
    problems = []
    for name in names:
        path = root / name
        if not path.is_file() or path.suffix not in {".py", ".flux", ".md", ".yaml", ".yml", ".conf", ".toml", ""}:
            continue
        for doc, section in _CITATION.findall(path.read_text(errors="replace")):
            target = root / doc
            if not target.is_file():
                problems.append(f"{name}: {doc} does not exist")
            elif not any(section.replace("`", "") in h for h in headings(target.read_text())):
                problems.append(f'{name}: {doc} has no heading "{section}"')
    return problems


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# -- the repository ---------------------------------------------------------------------------------


def test_no_tracked_file_points_outside_the_repository():
    names = [n for n in tracked_files() if n != THIS_FILE and n not in PENDING_REWRITE]
    assert outside_pointers(REPO, names) == {}


def test_files_pending_a_rewrite_are_listed_only_while_they_still_need_it():
    names = tracked_files()
    still_pointing = outside_pointers(REPO, [n for n in PENDING_REWRITE if n in names])
    assert sorted(still_pointing) == sorted(PENDING_REWRITE), (
        "remove from PENDING_REWRITE what no longer exists or no longer points outside: "
        f"{sorted(PENDING_REWRITE - still_pointing.keys())}")


def test_the_design_documents_are_in_the_repository():
    for name in ("architecture.md", "readings.md", "alerts.md", "influxdb-and-grafana.md"):
        assert (REPO / "docs" / name).is_file(), name
    assert "docs/architecture.md" in link_targets((REPO / "README.md").read_text())


@pytest.mark.parametrize("markdown_file", markdown_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_reaches_a_file_of_the_repository(markdown_file: Path):
    assert broken_links(REPO, markdown_file) == []


def test_every_citation_of_a_docs_section_names_an_existing_heading():
    names = [n for n in tracked_files() if n != THIS_FILE and (REPO / n).is_file()]
    cited = [n for n in names if _CITATION.search((REPO / n).read_text(errors="replace"))]
    assert len(cited) >= 5  # the code cites the docs; a citation form the pattern misses would go unchecked
    assert broken_citations(REPO, names) == []


def test_the_flux_task_installed_into_influxdb_names_no_file_of_the_repository():
    # Its text ends up in a user's InfluxDB, where no path of this repository means anything.
    source = (REPO / "chargewatch" / "influx" / "tasks" / "efficiency.flux").read_text()
    comments = "\n".join(line for line in source.splitlines() if line.lstrip().startswith("//"))
    assert not re.search(r"[\w.-]+/[\w./-]+\.(py|json|md|flux)\b", comments), comments
    assert "DESIGN" not in comments


# -- the checks themselves --------------------------------------------------------------------------


def test_the_pointer_check_finds_each_kind_of_pointer(tmp_path: Path):
    samples = {
        "a.py": '"""See ../shared/DESIGN.md."""\n',
        "b.md": "notes in shared/reference/facts.md\n",
        "c.py": '# rules of DESIGN "Alerts"\n',
        "d.txt": "see shared/STYLE.md\n",
        "clean.py": '"""See docs/alerts.md "The rules"."""\n',
    }
    for name, text in samples.items():
        (tmp_path / name).write_text(text)
    found = outside_pointers(tmp_path, sorted(samples))
    assert sorted(found) == ["a.py", "b.md", "c.py", "d.txt"]
    assert found["a.py"] == ['1: """See ../shared/DESIGN.md."""']


def test_the_link_check_finds_missing_files_missing_headings_and_links_leaving_the_repository(tmp_path: Path):
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "alerts.md").write_text("# Alerts\n\n## The rules: `low` and high\n")
    (root / "README.md").write_text(
        "[ok](docs/alerts.md) [ok anchor](docs/alerts.md#the-rules-low-and-high) [web](https://example.com/x.md)\n"
        "[gone](docs/missing.md) [bad anchor](docs/alerts.md#nothing) [out](../shared/DESIGN.md)\n"
        "`[in a code span](nowhere.md)`\n\n```\n[in a fence](nowhere.md)\n```\n[ref]: docs/also-missing.md\n")
    assert broken_links(root, root / "README.md") == [
        "docs/missing.md: no such file",
        "docs/alerts.md#nothing: no heading #nothing in docs/alerts.md",
        "../shared/DESIGN.md: outside the repository",
        "docs/also-missing.md: no such file",
    ]


def test_the_citation_check_finds_missing_documents_and_sections(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "alerts.md").write_text("# Alerts\n\n## The rules\n")
    (tmp_path / "code.py").write_text('# docs/alerts.md "The rules" docs/alerts.md "Spans" docs/gone.md "X"\n')
    assert broken_citations(tmp_path, ["code.py"]) == [
        'code.py: docs/alerts.md has no heading "Spans"',
        "code.py: docs/gone.md does not exist",
    ]
