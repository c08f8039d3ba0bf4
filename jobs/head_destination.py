"""A sweep's destination, written on the head.

The farm's images are files on the head (its OutputWriter runs there) and a plain
--output-dir is a folder on the head, but a `ray job submit` entrypoint runs wherever Ray
puts it (on the head by default; anywhere once --entrypoint-num-cpus/-gpus/-resources ask
for something). So every read and write of the destination goes through one small actor
pinned to the head node with NodeAffinitySchedulingStrategy: nothing of a sweep ever
writes the user's path from another node, and copying an image reads it where it is.
"""
from __future__ import annotations

import os
from pathlib import Path

import ray
from ray.exceptions import RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from farm.errors import FarmUnavailable
from jobs.destination import Destination, DestinationError, in_ray_job

HEAD_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource, and only it


def head_node_id() -> str:
    for node in ray.nodes():
        if node["Alive"] and HEAD_RESOURCE in node["Resources"]:
            return node["NodeID"]
    raise FarmUnavailable("the Ray cluster reports no live head node; is it shutting down?")


@ray.remote(num_cpus=0)
class _Writer:
    """Destination's methods, run on the head."""

    def __init__(self, target: str):
        self.destination: Destination | None = None
        self.target = target

    def open(self) -> tuple[str, str]:
        self.destination = Destination(self.target)
        return self.destination.manifest_url, ray.get_runtime_context().get_node_id()

    def url(self, name: str) -> str:
        return self.destination.url(name)

    def read_manifest(self) -> list[dict]:
        return self.destination.read_manifest()

    def write_manifest(self, entries: list[dict]) -> None:
        self.destination.write_manifest(entries)

    def put(self, source: str, name: str) -> str:
        return self.destination.put(Path(source), name)


def _call(ref):
    """ray.get, raising the destination's own error (OSError, DestinationError) plainly."""
    try:
        return ray.get(ref, timeout=300)
    except RayTaskError as exc:
        raise exc.cause from None


class HeadDestination:
    """Destination's interface (jobs.render_sweep uses only these), through the head's actor."""

    def __init__(self, target: str):
        if "://" not in target and not Path(target).expanduser().is_absolute():
            if in_ray_job():  # the same refusal Destination gives, before anything starts
                Destination(target)
            target = str(Path(target).expanduser().resolve())  # a path on the head, from our folder
        self.target = target
        self.node_id = head_node_id()
        self._actor = _Writer.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(self.node_id, soft=False)).remote(target)
        try:
            self.manifest_url, self.writer_node = _call(self._actor.open.remote())
        except DestinationError:
            ray.kill(self._actor)
            raise

    def url(self, name: str) -> str:
        return _call(self._actor.url.remote(name))

    def read_manifest(self) -> list[dict]:
        return _call(self._actor.read_manifest.remote())

    def write_manifest(self, entries: list[dict]) -> None:
        _call(self._actor.write_manifest.remote(entries))

    def put(self, source: Path, name: str) -> str:
        return _call(self._actor.put.remote(os.fspath(source), name))

    def close(self) -> None:
        try:
            ray.kill(self._actor)
        except Exception:  # Ray is already gone
            pass
