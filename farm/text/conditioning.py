"""CONDITIONING as the text encoders produce it; the class lives with the denoiser that
consumes it."""
from farm.sampling.denoiser import Conditioning

__all__ = ["Conditioning"]
