"""The actors tests use the session fixtures `ray_farm` and `txt2img` of tests/conftest.py."""
