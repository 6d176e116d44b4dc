"""The README's configuration tables, generated from the settings model (``chargewatch.settings``).

``python -m chargewatch.settings_table README.md`` rewrites the tables between the README's
``<!-- settings:NAME -->`` and ``<!-- /settings:NAME -->`` markers; a test fails while they differ
from what this module generates.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from chargewatch.settings import ENV_PREFIX, Settings, default_data_dir

# table name -> the top-level sections it lists ("" = the top-level fields themselves)
TABLES = {
    "main": ("", "limits", "ingest", "analytics", "efficiency", "alerts", "pairing", "auth", "sqlite"),
    "influx": ("influx",),
}
_MARKERS = re.compile(r"(<!-- settings:(\w+) -->\n)(.*?)(<!-- /settings:\2 -->)", re.S)


def _default(field: FieldInfo) -> str:
    if field.default_factory is default_data_dir:
        return "`$XDG_DATA_HOME/chargewatch` or `~/.local/share/chargewatch`"
    value: Any = field.get_default(call_default_factory=True, validated_data={})
    if value is PydanticUndefined or value is None or value == [] or value == SecretStr(""):
        return "(none)"
    if isinstance(value, SecretStr):
        return "(set)"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    if isinstance(value, bool):
        value = str(value).lower()
    return f"`{value}`"


def settings_rows(sections: tuple[str, ...]) -> Iterator[tuple[str, str, str]]:
    """(environment variable, default, meaning) of every setting in ``sections``, in model order."""
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            if "" in sections:
                yield f"{ENV_PREFIX}{name.upper()}", _default(field), field.description or ""
        elif name in sections:
            for sub_name, sub_field in annotation.model_fields.items():
                yield (f"{ENV_PREFIX}{name.upper()}__{sub_name.upper()}", _default(sub_field),
                       sub_field.description or "")


def markdown_table(table: str) -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for variable, default, meaning in settings_rows(TABLES[table]):
        escaped = meaning.replace("|", r"\|")
        lines.append(f"| `{variable}` | {default} | {escaped} |")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    """``text`` with every marked table replaced by the generated one."""
    return _MARKERS.sub(lambda m: m.group(1) + markdown_table(m.group(2)) + m.group(4), text)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m chargewatch.settings_table README.md", file=sys.stderr)
        return 2
    path = Path(argv[0])
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
