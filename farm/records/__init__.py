"""Records that several layers share, below all of them: events, images, paths, residency,
and the queue, history and worker records the farm shows. Plain dataclasses and enums;
nothing here imports torch, Ray or the web server."""
