"""The task runner's state in the shared SQLite database (RunnerStateStore of
``chargewatch.efficiency_ports``): table ``runner_state (key, value)``."""

from __future__ import annotations

from chargewatch.stores.sqlite_database import SqliteDatabase

_SCHEMA = ["CREATE TABLE IF NOT EXISTS runner_state (key TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID"]


class SqliteRunnerState:
    """RunnerStateStore on the ``runner_state`` table."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.database = database
        database.ensure_tables(_SCHEMA, "runner state")

    def load(self) -> dict[str, float]:
        return dict(self.database.read("SELECT key, value FROM runner_state"))

    def update(self, values: dict[str, float]) -> None:
        self.database.write(("INSERT INTO runner_state VALUES (?, ?) "
                             "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, float(value)))
                            for key, value in values.items())
