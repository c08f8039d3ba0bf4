"""`farm ...`: the command line. Errors a user can fix are printed as one message and a
non-zero exit code; a traceback means a bug in farm."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from farm.errors import FarmError

DEFAULT_ROOT = Path(".farm")
EXIT_BAD_INPUT = 2


def _add_paths(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=Path, help="a ComfyUI-style models folder (default: .farm/models)")
    p.add_argument("--output", type=Path, help="where images are written (default: .farm/output)")


def cmd_make_checkpoint(args) -> int:
    from farm.models.make import make_checkpoint

    started = time.perf_counter()
    path = make_checkpoint(args.arch, Path(args.path), seed=args.seed)
    print(f"wrote {args.arch} checkpoint to {path} in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_run(args) -> int:
    from farm.local import FarmPaths, LocalRenderer
    from farm.prepare import load_json_file, parse_override

    overrides = {f"{n}.{i}": v for n, i, v in map(parse_override, args.set or [])}
    paths = FarmPaths.under(DEFAULT_ROOT, args.models, args.output)
    workflow = load_json_file(args.workflow)
    renderer = LocalRenderer(paths)
    try:
        prepared = renderer.prepare(workflow, overrides)
        started = time.perf_counter()
        outcome = renderer.run(prepared)
    finally:
        renderer.close()
    if not outcome.ok:
        raise outcome.error
    _print_outputs(paths, outcome.outputs)
    print(f"done in {time.perf_counter() - started:.2f} s")
    return 0


def cmd_demo(args) -> int:
    """The README's main job: make a tiny checkpoint when there is none, render a small
    batch of the sample workflow, say where the PNGs went and how long it took."""
    import json
    from importlib.resources import files

    from farm.local import FarmPaths, LocalRenderer
    from farm.models.make import make_checkpoint

    paths = FarmPaths.under(DEFAULT_ROOT, args.models, args.output)
    ckpt = paths.models / "checkpoints" / "tiny-sd15.safetensors"
    if not ckpt.exists():
        print(f"no checkpoint yet: making a tiny random one at {ckpt}")
        make_checkpoint("tiny-sd15", ckpt, seed=0)
    workflow = json.loads(files("farm").joinpath("workflows/txt2img.json").read_text())
    renderer = LocalRenderer(paths)
    started = time.perf_counter()
    try:
        for i in range(args.count):
            outcome = renderer.run(renderer.prepare(workflow, {"3.seed": args.seed + i}))
            if not outcome.ok:
                raise outcome.error
            _print_outputs(paths, outcome.outputs)
    finally:
        renderer.close()
    elapsed = time.perf_counter() - started
    print(f"rendered {args.count} images in {elapsed:.2f} s ({args.count / elapsed:.2f} images/s) into {paths.output}")
    return 0


def _print_outputs(paths, outputs: dict) -> None:
    for ui in outputs.values():
        for image in ui.get("images", []):
            folder = paths.output if image["type"] == "output" else paths.temp
            print(folder / image["subfolder"] / image["filename"])


def cmd_simulate(args, rest: list[str]) -> int:
    from farm.scheduler.simulate import main as simulate_main

    return simulate_main(rest)


def cmd_bench(rest: list[str]) -> int:
    from farm.bench import main as bench_main

    return bench_main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farm", description="renderfarm: ComfyUI workflows on a GPU farm")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a workflow (API or UI format JSON)")
    p.add_argument("workflow", type=Path)
    _add_paths(p)
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input; repeatable")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="render a few images of the sample workflow (makes a tiny checkpoint if needed)")
    _add_paths(p)
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("make-checkpoint", help="write a checkpoint with random weights")
    p.add_argument("arch", choices=("tiny-sd15", "tiny-sdxl", "sd15", "sdxl"))
    p.add_argument("path", help="ends in .safetensors: one file in the LDM layout; else a diffusers folder")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_checkpoint)

    sub.add_parser("simulate", help="compare placement policies on a simulated trace", add_help=False)
    sub.add_parser("bench", help="GPU throughput: one job at a time vs cross-job batches", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        return cmd_simulate(None, argv[1:])
    if argv[:1] == ["bench"]:
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FarmError as exc:
        print(f"farm {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
