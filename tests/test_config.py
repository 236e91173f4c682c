"""Settings come from the environment, then secrets.toml; errors name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkgpt_core.config import DEMO_MODEL, SETTINGS, Settings
from bulkgpt_core.errors import ConfigError
from bulkgpt_core.stores import open_store


def test_defaults_use_the_demo_model_without_a_key(tmp_path: Path) -> None:
    settings = Settings.from_env({}, tmp_path / "missing.toml")
    assert settings.store == "sqlite"
    assert settings.runner == "local"
    assert not settings.has_gemini_key
    assert settings.default_model == DEMO_MODEL
    assert settings.rpm is None and settings.concurrency == 16


def test_secrets_file_feeds_settings_and_env_wins(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(
        'GEMINI_API_KEY = "from-file"\nBULKGPT_RPM = 600\n[section]\nx = 1\n'
    )
    settings = Settings.from_env({"BULKGPT_RPM": "900"}, secrets)
    assert settings.gemini_api_key == "from-file"
    assert settings.default_model == "gemini-2.5-flash"
    assert settings.rpm == 900


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"BULKGPT_STORE": "mongo"}, "BULKGPT_STORE"),
        ({"BULKGPT_CONCURRENCY": "many"}, "BULKGPT_CONCURRENCY"),
        ({"BULKGPT_MAX_ROWS": "-1"}, "BULKGPT_MAX_ROWS"),
        ({"BULKGPT_REQUEST_TIMEOUT": "soon"}, "BULKGPT_REQUEST_TIMEOUT"),
    ],
)
def test_bad_values_name_the_setting(tmp_path: Path, env, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        Settings.from_env(env, tmp_path / "missing.toml")


def test_a_broken_secrets_file_says_so(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.toml"
    secrets.write_text("GEMINI_API_KEY = \n")
    with pytest.raises(ConfigError, match=r"secrets\.toml"):
        Settings.from_env({}, secrets)


@pytest.mark.parametrize(
    ("store", "missing"),
    [("postgres", "DATABASE_URL"), ("supabase", "SUPABASE_URL")],
)
def test_a_chosen_store_without_its_settings(tmp_path: Path, store, missing) -> None:
    settings = Settings.from_env({"BULKGPT_STORE": store}, tmp_path / "none.toml")
    with pytest.raises(ConfigError, match=missing):
        open_store(settings)


def test_every_setting_has_help() -> None:
    assert all(s.help for s in SETTINGS)
    assert len({s.name for s in SETTINGS}) == len(SETTINGS)


def test_readme_lists_every_setting() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert missing == []
