"""One GPU worker without Ray: core.py runs batches on the engine; channels.py gets images
and events out without blocking the GPU thread; nvml.py samples the GPU's utilisation.
actors/gpu_worker.py wraps WorkerCore in a Ray actor."""
