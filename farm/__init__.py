"""renderfarm: run ComfyUI workflows on a farm of GPUs.

The library lives here (workflow, nodes, sampling, models, engine, scheduler, server,
client). It does not import Ray, except in farm/cluster.py.
"""
__version__ = "0.1.0"
