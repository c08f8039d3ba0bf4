"""Ray actors of the farm: thin shells around the plain-Python cores in farm/.

GpuWorker (one per GPU), Dispatcher (the durable queue, placement and batching), EventHub
(events of every prompt, for futures and websockets), OutputWriter (PNG files on the head).
"""
ACTOR_NAMESPACE = "renderfarm"  # every named actor of a farm lives here
DISPATCHER_NAME = "dispatcher"
EVENT_HUB_NAME = "events"
OUTPUT_WRITER_NAME = "writer"
WORKER_PREFIX = "worker-"
