"""Hypothesis for the fuzz tests: one profile, derandomized and without an example
database, so CI runs the same examples every time and writes nothing to the tree; the
per-test example counts keep the folder to seconds."""
from hypothesis import HealthCheck, settings

settings.register_profile(
    "farm-fuzz", derandomize=True, database=None, print_blob=True,
    # the validator walks a models folder and HTTP goes through a real server: slower than
    # hypothesis' defaults expect, and bounded by max_examples instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.load_profile("farm-fuzz")
