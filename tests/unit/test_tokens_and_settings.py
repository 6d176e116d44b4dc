"""Tokens (scopes, generation, constant-time check) and settings from the environment."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest
from pydantic import ValidationError

from chargewatch.settings import Settings, load_settings
from chargewatch.tokens import Tokens, load_tokens


def test_tokens_are_generated_once_into_the_data_dir_with_owner_only_permissions(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = load_tokens(settings)
    again = load_tokens(settings)
    assert first == again
    assert first.write[0].startswith("cw_w_") and first.read[0].startswith("cw_r_")
    assert first.write != first.read
    mode = stat.S_IMODE(os.stat(tmp_path / "tokens.json").st_mode)
    assert mode == 0o600


def test_tokens_from_the_environment_win_per_scope(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, auth={"write_tokens": ["w1", "w2"]})
    tokens = load_tokens(settings)
    assert tokens.write == ("w1", "w2")
    assert tokens.read[0].startswith("cw_r_")


def test_a_corrupt_tokens_file_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "tokens.json").write_text("{")
    with pytest.raises(ValueError, match="delete it to generate new tokens"):
        load_tokens(Settings(data_dir=tmp_path))


def test_a_token_grants_only_its_own_scope() -> None:
    tokens = Tokens(write=("w",), read=("r",))
    assert tokens.grants("w", "write") and not tokens.grants("w", "read")
    assert tokens.grants("r", "read") and not tokens.grants("r", "write")
    assert not tokens.grants("", "write") and not tokens.grants("ww", "write")


def test_settings_come_from_chargewatch_environment_variables(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CHARGEWATCH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CHARGEWATCH_INGEST__PORT", "9999")
    monkeypatch.setenv("CHARGEWATCH_AUTH__WRITE_TOKENS", "a, b")
    monkeypatch.setenv("CHARGEWATCH_PAIRING__PREFIXES", "BUS-:CHG-")
    monkeypatch.setenv("CHARGEWATCH_LIMITS__MAX_FUTURE_SKEW_SECONDS", "60")
    settings = Settings()
    assert settings.ingest.port == 9999
    assert settings.auth.write_tokens == ["a", "b"]
    assert settings.pairing.prefixes == ["BUS-:CHG-"]
    assert settings.limits.max_future_skew_seconds == 60
    assert settings.sqlite_path == tmp_path / "chargewatch.db"


@pytest.mark.parametrize("name,value,says", [
    ("CHARGEWATCH_INGEST__PORT", "http", "valid integer"),
    ("CHARGEWATCH_STORE", "postgres", "'sqlite' or 'influx'"),
    ("CHARGEWATCH_PAIRING__PREFIXES", "VEHICLE_", "VEHICLE_"),
    ("CHARGEWATCH_RETENTION_DAYS", "0", "greater than or equal to 1"),
])
def test_bad_configuration_fails_with_a_message(monkeypatch, name, value, says) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(SystemExit) as stopped:  # what a command prints: one line naming the variable
        load_settings()
    message = str(stopped.value.code)
    assert message.startswith("chargewatch: invalid configuration: ") and "\n" not in message
    assert f"{name}: " in message and says in message, message


def test_the_default_data_dir_follows_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("CHARGEWATCH_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert Settings().data_dir == tmp_path / "chargewatch"


def test_the_tokens_file_is_json_with_both_scopes(tmp_path) -> None:
    load_tokens(Settings(data_dir=tmp_path))
    assert set(json.loads((tmp_path / "tokens.json").read_text())) == {"write", "read"}


def test_alertmanager_urls_are_comma_separated_base_urls(monkeypatch) -> None:
    monkeypatch.setenv("CHARGEWATCH_ALERTS__ALERTMANAGER_URLS", "http://am-1:9093/, https://am-2.example/prefix")
    assert Settings().alerts.alertmanager_urls == ["http://am-1:9093", "https://am-2.example/prefix"]


@pytest.mark.parametrize("value,message", [
    ("alertmanager:9093", "not an http(s) base URL"),
    ("http://alertmanager:9093/api/v2/alerts", "give the base URL"),
])
def test_a_wrong_alertmanager_url_fails_with_a_message_naming_it(monkeypatch, value, message) -> None:
    monkeypatch.setenv("CHARGEWATCH_ALERTS__ALERTMANAGER_URLS", value)
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings()
