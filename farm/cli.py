"""`farm ...`: the command line. Errors a user can fix are printed as one message and a
non-zero exit code; a traceback means a bug in farm."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from farm.errors import FarmError

# The state folder: the queue database, input/, temp/, and models/ and output/ unless given.
# Under the current folder, as ComfyUI keeps its folders beside itself: one project's farm
# state stays with the project, and two projects never share a queue by accident.
DEFAULT_ROOT = Path(".farm")
EXIT_BAD_INPUT = 2


def _add_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, help="a ComfyUI-style models folder (default: .farm/models)")
    p.add_argument("--output", type=Path, help="where images are written (default: .farm/output)")


def _warm_shape(text: str) -> tuple[str, int, int, int]:
    """"sd15:16:512x512" -> ("sd15", 16, 64, 64): the compiler's (arch, jobs, latent h, latent w).
    An argparse type: a bad value is a ConfigError, one line from main, before Ray is touched."""
    from farm.errors import ConfigError

    parts = text.split(":")
    try:
        arch, jobs, size = parts
        width, height = (int(n) for n in size.lower().split("x"))
        jobs_n = int(jobs)
    except ValueError:
        raise ConfigError(f"--warm {text!r} is not ARCH:JOBS:WIDTHxHEIGHT, e.g. sd15:16:512x512") from None
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise ConfigError(f"--warm {text!r}: width and height are pixels, positive multiples of 8")
    from farm.models.compile_config import CompileConfig

    shape = (arch, jobs_n, height // 8, width // 8)
    CompileConfig(warm_shapes=(shape,))  # raises ConfigError naming the architectures it knows
    return shape


def _add_farm_setup(p: argparse.ArgumentParser) -> None:
    """What a farm started on a cluster is set up with (farm serve and farm start)."""
    p.add_argument("--model-source", metavar="PATH_OR_URI",
                   help="where a node fetches a model file its models folder lacks: a shared folder or an fsspec "
                        "URI laid out like models/ (e.g. s3://bucket/models with s3fs installed)")
    p.add_argument("--max-gpus", type=int, metavar="N",
                   help="most GPU workers as nodes join, and with autoscaling the most GPUs asked for "
                        "(default: every GPU; 8 asked for)")
    p.add_argument("--autoscale", action="store_true",
                   help="ask Ray's autoscaler for GPUs from the queue's backlog and retire idle workers when it "
                        "shrinks (implied by the three options below)")
    p.add_argument("--target-backlog-s", type=float, metavar="S",
                   help="autoscale: GPU seconds of queued work each GPU may carry (default 60)")
    p.add_argument("--scale-down-delay-s", type=float, metavar="S",
                   help="autoscale: how long a lower GPU count must hold before GPUs are given back (default 300)")
    p.add_argument("--min-gpus", type=int, metavar="N", help="autoscale: GPUs always kept (default 0)")
    p.add_argument("--no-compile", action="store_true",
                   help="sample with the eager UNet and VAE (default on a GPU: torch.compile, paid once per worker "
                        "and shape; its cache is kept under the farm's state folder)")
    p.add_argument("--warm", action="append", metavar="ARCH:JOBS:WxH", default=[], type=_warm_shape,
                   help="compile this shape when a GPU worker starts, before it takes a job (repeatable), e.g. "
                        "sd15:16:512x512 (SD1.5, batches of up to 16 jobs, 512 px); without it the first batch of a "
                        "shape pays its compile")


def _scaling(args):
    """(max_workers, ScaleKnobs or None) from the flags; a bad value is a FarmError."""
    from farm.scheduler.autoscale import ScaleKnobs, ScaleKnobsError

    max_gpus = getattr(args, "max_gpus", None)
    if max_gpus is not None and max_gpus < 1:
        raise ScaleKnobsError(f"--max-gpus is {max_gpus}; it must be at least 1")
    given = {name: value for name, value in (("target_backlog_s", getattr(args, "target_backlog_s", None)),
                                             ("scale_down_delay_s", getattr(args, "scale_down_delay_s", None)),
                                             ("min_gpus", getattr(args, "min_gpus", None))) if value is not None}
    if not (getattr(args, "autoscale", False) or given):
        return max_gpus, None
    if max_gpus is not None:
        given["max_gpus"] = max_gpus
    return max_gpus, ScaleKnobs(**given)


def _farm_config(args, paths, db):
    """The FarmConfig of a farm this command starts."""
    from actors import cluster

    from farm.models.compile_config import CompileConfig

    max_workers, knobs = _scaling(args)
    compile_cfg = CompileConfig(enabled=False) if getattr(args, "no_compile", False) else CompileConfig(
        warm_shapes=tuple(getattr(args, "warm", None) or ()))
    return cluster.FarmConfig(paths=paths, db=db, num_workers=getattr(args, "workers", None),
                              max_workers=max_workers, autoscale=knobs, compile=compile_cfg)


def _model_source(args) -> str | None:
    """A local folder as an absolute path (the farm's actors do not run in this folder)."""
    source = getattr(args, "model_source", None)
    if not source or "://" in source:
        return source or None
    return str(Path(source).expanduser().resolve())


def _add_limits(p: argparse.ArgumentParser) -> None:
    """The caps of farm.settings.Limits; a flag not given leaves FARM_<NAME>, the settings
    file, then the default in force."""
    p.add_argument("--config", type=Path, help="a TOML file of settings, e.g. max_steps = 100 (default: $FARM_CONFIG)")
    p.add_argument("--max-size", type=int, help="largest width/height a prompt may ask for (default 4096)")
    p.add_argument("--max-batch", type=int, help="largest batch_size a prompt may ask for (default 64)")
    p.add_argument("--max-steps", type=int, help="most sampler steps a prompt may ask for (default 200)")
    p.add_argument("--max-prompt-chars", type=int, help="longest string in a prompt (default 20000)")


def _limits(args):
    from farm.settings import Limits

    return Limits.load(args.config, max_width=args.max_size, max_height=args.max_size,
                       max_batch_size=args.max_batch, max_steps=args.max_steps,
                       max_prompt_chars=args.max_prompt_chars)


def cmd_make_checkpoint(args) -> int:
    from farm.models.make import make_checkpoint
    from farm.models.make_controlnet import CONTROLNET_ARCHES, make_controlnet
    from farm.models.make_lora import LORA_ARCHES, make_lora

    started = time.perf_counter()
    if args.arch in LORA_ARCHES:
        path = make_lora(args.arch, Path(args.path), seed=args.seed, layout=args.layout or "kohya", rank=args.rank)
    elif args.arch in CONTROLNET_ARCHES:
        path = make_controlnet(args.arch, Path(args.path), seed=args.seed, layout=args.layout or "ldm")
    else:
        path = make_checkpoint(args.arch, Path(args.path), seed=args.seed)
    print(f"wrote {args.arch} checkpoint to {path} in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_run(args) -> int:
    from farm.nodes.registry import default_registry
    from farm.nodes.spec import NodeContext
    from farm.records.paths import FarmPaths
    from farm.workflow.prepare import load_json_file, parse_override, prepare

    overrides = {f"{n}.{i}": v for n, i, v in map(parse_override, args.set or [])}
    workflow = load_json_file(args.workflow)
    paths = FarmPaths.under(DEFAULT_ROOT, args.models, args.output)
    limits = _limits(args)
    # Validate before starting anything: a bad workflow is answered in a second, not after Ray starts.
    prepared = prepare(workflow, default_registry(), NodeContext.for_paths(paths, limits), overrides)
    started = time.perf_counter()
    if args.local:
        files = _run_local(prepared, paths)
    else:
        from farm.client import Farm

        _embedded_ray_only()
        with Farm.local(models=_models(args), output=args.output, root=DEFAULT_ROOT, limits=limits) as farm:
            (future,) = farm.submit_prepared([prepared])
            files = future.result().files
    for path in files:
        print(path)
    print(f"done in {time.perf_counter() - started:.2f} s")
    return 0


def _models(args) -> Path:
    return args.models or DEFAULT_ROOT / "models"


def _embedded_ray_only() -> None:
    """run, demo and serve without --address start their own Ray (ray.init(address="local"));
    $RAY_ADDRESS is dropped so that nothing they start joins that cluster by accident."""
    if os.environ.pop("RAY_ADDRESS", None):
        print("note: RAY_ADDRESS is set; this command starts its own embedded Ray anyway "
              "(use `--address auto` with farm serve/start, or Farm.connect, for a cluster)", file=sys.stderr)


def _run_local(prepared, paths) -> list[Path]:
    """In this process, without Ray: the engine on this machine's device, running the
    prompt already validated."""
    from farm.engine.local import LocalRenderer

    renderer = LocalRenderer(paths)
    try:
        outcome = renderer.run(prepared)
    finally:
        renderer.close()
    if not outcome.ok:
        raise outcome.error
    return [(paths.output if image["type"] == "output" else paths.temp) / image["subfolder"] / image["filename"]
            for ui in outcome.outputs.values() for image in ui.get("images", [])]


def cmd_demo(args) -> int:
    """The README's main job: make a tiny checkpoint when there is none, start the farm on
    an embedded Ray (SQLite queue under .farm/), render a small batch of the sample
    workflow, say where the PNGs went and how long it took."""
    import json
    from importlib.resources import files

    from farm.client import Farm
    from farm.models.make import make_checkpoint

    models = _models(args)
    limits = _limits(args)
    ckpt = models / "checkpoints" / "tiny-sd15.safetensors"
    if not ckpt.exists():
        print(f"no checkpoint yet: making a tiny random one at {ckpt}")
        make_checkpoint("tiny-sd15", ckpt, seed=0)
    workflow = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
    started = time.perf_counter()
    _embedded_ray_only()
    with Farm.local(models=models, output=args.output, root=DEFAULT_ROOT, limits=limits) as farm:
        ready = time.perf_counter()
        print(f"farm started in {ready - started:.1f} s ({len(farm.status().workers)} worker(s)); "
              f"rendering {args.count} images")
        results = farm.map(workflow, [{"3.seed": args.seed + i} for i in range(args.count)], progress=False)
        elapsed = time.perf_counter() - ready
    for result in results:
        for path in result.files:
            print(path)
    print(f"rendered {args.count} images in {elapsed:.2f} s ({args.count / elapsed:.2f} images/s; "
          f"{time.perf_counter() - started:.1f} s with the farm's start) into {farm.paths.output}")
    return 0


def cmd_serve(args) -> int:
    """The ComfyUI-compatible server over the farm: an embedded Ray unless --address, where
    it joins the farm running there or starts one. $RAY_ADDRESS alone does not make it
    join a cluster (it may be a stranger's, or stale): `--address auto` reads it."""
    if not args.address:  # before Ray and its imports: a locked or corrupt queue is answered at once
        _check_queue_db(args.db.absolute())
    from actors import cluster
    from actors.service import RayFarmService
    from farm.server.app import serve
    from farm.server.config import ServerConfig

    limits = _limits(args)  # before Ray starts: a bad setting is answered at once
    _scaling(args)
    if args.address:
        farm_cluster, paths, _ = _start_or_join(args, args.address)
    else:
        _embedded_ray_only()
        paths = _paths(args)
        db = args.db.absolute()
        cluster.init_local()
        paths.create()
        db.parent.mkdir(parents=True, exist_ok=True)
        farm_cluster = cluster.FarmCluster.start(_farm_config(args, paths, db))
    config = ServerConfig(models_dir=paths.models, input_dir=paths.input, output_dir=paths.output,
                          temp_dir=paths.temp, limits=limits, host=args.host, port=args.port, token=args.token,
                          frontend_root=args.front_end_root, web_ui=not args.no_web_ui,
                          model_source=paths.model_source)
    print(f"serving the farm on http://{args.host}:{args.port} (models: {paths.models}, output: {paths.output}); "
          f"dashboard at /farm")
    serve(RayFarmService(farm_cluster, paths), config)
    return 0


def _check_queue_db(db: Path) -> None:
    """Open the queue database once before Ray starts: a locked or corrupt file is one
    line at once (a ConfigError from the store), not a dispatcher that cannot start."""
    from farm.scheduler.store import JobStore

    db.parent.mkdir(parents=True, exist_ok=True)
    JobStore(db).close()


def _address(args) -> str | None:
    return args.address or os.environ.get("RAY_ADDRESS") or None


def _paths(args):
    from farm.records.paths import FarmPaths

    return FarmPaths.under(DEFAULT_ROOT, args.models, args.output, _model_source(args))


def _start_or_join(args, address: str):
    """Join the farm on the cluster at `address`, or start its actors there (detached: they
    outlive this process). Returns (FarmCluster, the farm's paths, True if started here)."""
    from actors import cluster

    _, knobs = _scaling(args)  # a bad value is refused before anything is joined
    cluster.init_connect(address)
    try:
        found = cluster.FarmCluster.find()
    except cluster.FarmUnavailable:
        found = None
    if found is not None:
        if knobs is not None:  # the running farm takes new knobs live (until its dispatcher restarts)
            found.call("set_autoscale", knobs)
            print(f"autoscaling the running farm: {knobs}", file=sys.stderr)
        return found, found.call("paths"), False
    # absolute: the actors do not run in this folder
    paths = _absolute_paths(args)
    db = Path(args.db).expanduser().resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return cluster.FarmCluster.start(_farm_config(args, paths, db)), paths, True


def _absolute_paths(args):
    from farm.records.paths import FarmPaths

    p = _paths(args)
    return FarmPaths(*(Path(x).expanduser().resolve() for x in (p.models, p.output, p.input, p.temp)),
                     model_source=p.model_source)


def cmd_start(args) -> int:
    """A headless farm on a running Ray cluster: start its actors and exit, leaving them running."""
    address = _address(args) or "auto"
    farm_cluster, paths, started = _start_or_join(args, address)
    workers = farm_cluster.call("worker_ids")
    verb = "started a farm" if started else "a farm already runs"
    print(f"{verb} on the Ray cluster at {address}: {len(workers)} worker(s), models: {paths.models}, "
          f"output: {paths.output}; stop it with `farm stop --address {address}`")
    return 0


def cmd_stop(args) -> int:
    """End the farm's actors on a cluster (its queue database stays for the next start)."""
    from actors import cluster

    address = _address(args) or "auto"
    cluster.init_connect(address)
    try:
        found = cluster.FarmCluster.find()
    except cluster.FarmUnavailable:
        print(f"no farm runs on the Ray cluster at {address}: nothing to stop")
        return 0
    workers = found.call("worker_ids", timeout_s=60)
    found.stop()
    print(f"stopped the farm on the Ray cluster at {address} ({len(workers)} worker(s))")
    return 0


def cmd_simulate(args, rest: list[str]) -> int:
    from farm.scheduler.simulate_cli import main as simulate_main

    return simulate_main(rest)


def cmd_bench(rest: list[str]) -> int:
    from jobs.bench import main as bench_main

    return bench_main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="renderfarm: ComfyUI workflows on a GPU farm")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a workflow (API or UI format JSON)")
    p.add_argument("workflow", type=Path)
    _add_paths(p)
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input; repeatable")
    p.add_argument("--local", action="store_true", help="run in this process, without Ray")
    _add_limits(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("serve", help="the ComfyUI-compatible HTTP/WebSocket API over the farm")
    _add_paths(p)
    p.add_argument("--host", default="127.0.0.1", help="loopback by default; anything else wants --token")
    p.add_argument("--port", type=int, default=8188)
    p.add_argument("--address", help="a running Ray cluster (auto: $RAY_ADDRESS or this machine's; HOST:PORT): "
                   "join its farm, or start one there, instead of an embedded Ray")
    p.add_argument("--db", type=Path, default=DEFAULT_ROOT / "queue.sqlite", help="the durable queue (SQLite)")
    p.add_argument("--token", help="require this bearer token on every route (default: $FARM_TOKEN)")
    _add_farm_setup(p)
    _add_limits(p)
    p.add_argument("--front-end-root", type=Path, help="serve this built ComfyUI frontend at / "
                                                       "(default: the comfyui-frontend-package's, if installed)")
    p.add_argument("--no-web-ui", action="store_true", help="serve the API only, not ComfyUI's web UI")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("start", help="start a headless farm on a running Ray cluster and exit (it keeps running)")
    _add_paths(p)
    p.add_argument("--address", help="the Ray cluster: auto (this machine's), HOST:PORT (default: $RAY_ADDRESS, "
                   "else auto)")
    p.add_argument("--db", type=Path, default=DEFAULT_ROOT / "queue.sqlite",
                   help="the durable queue (SQLite) on the head")
    p.add_argument("--workers", type=int, help="GPU workers to start (default: one per GPU of the cluster)")
    _add_farm_setup(p)
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("stop", help="stop the farm's actors on a Ray cluster (the queue database stays)")
    p.add_argument("--address", help="the Ray cluster (default: $RAY_ADDRESS, else auto)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("demo", help="render a few images of the sample workflow (makes a tiny checkpoint if needed)")
    _add_paths(p)
    p.add_argument("--count", type=int, default=4)
    _add_limits(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("make-checkpoint", help="write a checkpoint with random weights")
    p.add_argument("arch", choices=("tiny-sd15", "tiny-sdxl", "sd15", "sdxl", "tiny-sdxl-refiner", "sdxl-refiner",
                                    "tiny-lora-sd15", "tiny-lora-sdxl", "lora-sd15", "lora-sdxl",
                                    "tiny-controlnet-sd15", "tiny-controlnet-sdxl", "controlnet-sd15", "controlnet-sdxl"))
    p.add_argument("path", help="ends in .safetensors: one file in the LDM layout; else a diffusers folder "
                                "(a LoRA is always one .safetensors file)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=("kohya", "peft", "ldm", "diffusers"), default=None,
                   help="key layout: LoRA kohya (default) or peft; ControlNet file ldm (default) or diffusers")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank")
    p.set_defaults(func=cmd_make_checkpoint)

    sub.add_parser("simulate", help="compare placement policies on a simulated trace", add_help=False)
    sub.add_parser("bench", help="GPU throughput: one job at a time vs cross-job batches", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    try:
        # these two parse their own flags (their parsers live beside their code)
        if command == "simulate":
            return cmd_simulate(None, argv[1:])
        if command == "bench":
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except FarmError as exc:
        print(f"farm {command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
