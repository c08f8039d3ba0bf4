"""renderfarm: run ComfyUI workflows on a farm of GPUs.

The library lives here (records, workflow, nodes, sampling, models, engine, scheduler,
worker, server) and imports no Ray. The Ray side is the top-level `actors` package; the
entry points farm.cli and farm.client (and jobs/) sit on top of both.
"""
__version__ = "0.1.0"
