"""The README's configuration tables are the settings model's (chargewatch.settings_table)."""

from __future__ import annotations

from pathlib import Path

from chargewatch.settings import Settings
from chargewatch.settings_table import TABLES, markdown_table, render, settings_rows

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_tables_are_what_the_settings_model_generates() -> None:
    text = README.read_text()
    for table in TABLES:
        assert f"<!-- settings:{table} -->" in text and f"<!-- /settings:{table} -->" in text, table
    assert render(text) == text, "README settings tables are stale: run python -m chargewatch.settings_table README.md"


def test_every_setting_is_in_a_table_once_with_a_meaning() -> None:
    rows = [row for sections in TABLES.values() for row in settings_rows(sections)]
    variables = [variable for variable, _, _ in rows]
    assert len(variables) == len(set(variables))
    expected = set()
    for name, field in Settings.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        if sub:
            expected |= {f"CHARGEWATCH_{name.upper()}__{s.upper()}" for s in sub}
        else:
            expected |= {f"CHARGEWATCH_{name.upper()}"}
    assert set(variables) == expected
    assert [v for v, _, meaning in rows if not meaning] == []


def test_a_changed_default_shows_in_the_table(monkeypatch) -> None:
    field = Settings.model_fields["retention_days"]
    monkeypatch.setattr(field, "default", 45)
    assert "| `CHARGEWATCH_RETENTION_DAYS` | `45` |" in markdown_table("main")


def test_the_bundle_spells_every_chargewatch_setting_as_natively() -> None:
    import re

    repo = README.parent
    variables = {variable for sections in TABLES.values() for variable, _, _ in settings_rows(sections)}
    in_env = re.findall(r"^(CHARGEWATCH_\w+)=", (repo / ".env.example").read_text(), re.M)
    assert in_env and set(in_env) <= variables, sorted(set(in_env) - variables)
    compose = (repo / "docker-compose.yml").read_text()
    mappings = re.findall(r"(CHARGEWATCH_\w+): \$\{(CHARGEWATCH_\w+)", compose)
    assert mappings and all(inside == outside for inside, outside in mappings), mappings
    assert set(re.findall(r"\b(CHARGEWATCH_\w+)", compose)) <= variables
