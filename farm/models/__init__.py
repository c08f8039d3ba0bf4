"""Checkpoints: the models folder, architecture detection, loading, and farm's own
random-weight checkpoints. Heavy modules (load, make) are imported by name when needed,
so `import farm.models.store` stays light."""
from farm.models.arch import ARCHES

__all__ = ["ARCHES"]
