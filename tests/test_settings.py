"""farm.settings.Limits: one set of caps, from flags, FARM_* variables and a TOML file, in
that order of strength."""
import pytest

from farm.settings import Limits, SettingsError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("FARM_CONFIG", "FARM_MAX_STEPS", "FARM_MAX_PROMPT_CHARS", "FARM_MAX_WIDTH"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_farms():
    limits = Limits.load()
    assert (limits.max_width, limits.max_height, limits.max_batch_size, limits.max_steps) == (4096, 4096, 64, 200)
    assert limits.max_prompt_chars == 20_000


def test_flag_beats_environment_beats_file_beats_default(tmp_path, monkeypatch):
    config = tmp_path / "farm.toml"
    config.write_text("max_steps = 100\nmax_prompt_chars = 500\nmax_width = 1024\n")
    assert Limits.load(config).max_steps == 100
    monkeypatch.setenv("FARM_MAX_STEPS", "150")
    monkeypatch.setenv("FARM_CONFIG", str(config))
    limits = Limits.load(max_prompt_chars=None, max_width=2048)
    assert (limits.max_steps, limits.max_prompt_chars, limits.max_width, limits.max_height) == (150, 500, 2048, 4096)
    assert Limits.load(max_steps=7).max_steps == 7


def test_bad_settings_name_the_setting_and_where(tmp_path, monkeypatch):
    with pytest.raises(SettingsError, match="not found"):
        Limits.load(tmp_path / "missing.toml")
    config = tmp_path / "farm.toml"
    config.write_text("max_stepz = 100\n")
    with pytest.raises(SettingsError, match="max_stepz"):
        Limits.load(config)
    config.write_text("max_steps = [\n")
    with pytest.raises(SettingsError, match="cannot read settings file"):
        Limits.load(config)
    monkeypatch.setenv("FARM_MAX_STEPS", "lots")
    with pytest.raises(SettingsError, match="max_steps"):
        Limits.load()
    monkeypatch.delenv("FARM_MAX_STEPS")
    with pytest.raises(SettingsError, match="max_steps"):
        Limits.load(max_steps=0)
