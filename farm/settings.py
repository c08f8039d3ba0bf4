"""The farm's caps on what one prompt may ask for: one settings model read by the HTTP
server, the Python API, the CLI and jobs/, so that they cannot disagree.

Where a value comes from, strongest first: a CLI flag or a keyword argument, an
environment variable (FARM_MAX_STEPS=100), a TOML file (--config FILE or $FARM_CONFIG,
flat keys: `max_steps = 100`), the defaults below. ComfyUI has no caps on prompt text or
JSON shape; the defaults here are sized for a shared farm: a real workflow stays far
below them, a hostile or broken one is refused before it is queued.
"""
from __future__ import annotations

import contextvars
import os
from pathlib import Path

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

from farm.errors import FarmError

CONFIG_ENV = "FARM_CONFIG"
ENV_PREFIX = "FARM_"

# The file `Limits.load` reads, handed to settings_customise_sources (a classmethod that
# pydantic-settings calls with no room for arguments of ours).
_config_file: contextvars.ContextVar[Path | None] = contextvars.ContextVar("farm_config_file", default=None)


class SettingsError(FarmError):
    """A cap given in a flag, an environment variable or the settings file is unusable."""


class Limits(BaseSettings):
    """Caps a farm puts on the work a prompt may ask for. The first four act as the max of
    the node inputs that name them (`InputSpec.cap`); the rest bound the prompt's JSON."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    max_width: int = Field(4096, ge=1, description="largest width a prompt may ask for (ComfyUI: 16384)")
    max_height: int = Field(4096, ge=1, description="largest height a prompt may ask for (ComfyUI: 16384)")
    max_batch_size: int = Field(64, ge=1, description="largest batch_size (ComfyUI: 4096)")
    max_steps: int = Field(200, ge=1, description="most sampler steps (ComfyUI: 10000)")
    max_prompt_chars: int = Field(20_000, ge=1, description="longest string in a prompt, in characters "
                                  "(CLIP reads 77 tokens a chunk: 20,000 characters is ~60 chunks; ComfyUI: none)")
    max_prompt_bytes: int = Field(4 * 1024 * 1024, ge=1, description="all strings of one request together, "
                                  "UTF-8 bytes (a large saved UI graph in extra_pnginfo is ~1 MB)")
    max_json_depth: int = Field(64, ge=4, description="deepest nesting of lists/objects in a request "
                                "(an API prompt is 4 deep, a UI graph about 10)")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        path = _config_file.get()
        file = (TomlConfigSettingsSource(settings_cls, toml_file=path),) if path is not None else ()
        return (init_settings, env_settings, *file)

    @classmethod
    def uncapped(cls) -> "Limits":
        """No farm caps, only ComfyUI's own maxima: for a worker re-validating a prompt that
        passed the farm's caps at submission (its own environment must not refuse it)."""
        big = 2**62
        return cls.model_construct(max_width=16384, max_height=16384, max_batch_size=4096, max_steps=10000,
                                   max_prompt_chars=big, max_prompt_bytes=big, max_json_depth=big)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: int | None) -> "Limits":
        """The caps in force: `overrides` (None values are not given), then FARM_* variables,
        then the TOML file (`config_file`, else $FARM_CONFIG), then the defaults."""
        path = config_file or os.environ.get(CONFIG_ENV) or None
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise SettingsError(f"settings file {path} not found (given by --config or ${CONFIG_ENV})")
        token = _config_file.set(path)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            where = f" (file {path})" if path else ""
            raise SettingsError(f"bad farm setting{where}: {problems}; set it by flag, "
                                f"{ENV_PREFIX}<NAME> or the settings file") from None
        except Exception as exc:  # a TOML syntax error
            raise SettingsError(f"cannot read settings file {path}: {exc}") from None
        finally:
            _config_file.reset(token)


def default_limits() -> Limits:
    """The caps from the environment and $FARM_CONFIG (what a NodeContext gets when none is given)."""
    return Limits.load()
