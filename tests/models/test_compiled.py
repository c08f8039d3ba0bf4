"""Compiled sampling equals eager sampling: the tiny SD1.5 UNet through torch.compile
(backend aot_eager: CI has two cores and no GPU, and inductor's code generation for the
UNet takes minutes there; aot_eager runs the same dynamo trace, guards, bucket padding and
dynamic batch dimension) against the plain module, for one job and for three jobs padded
from 6 to 8 UNet rows, after warming those shapes on a random-weight UNet as a worker does
at start (the compile is then shared: one per test run)."""
from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from farm.engine.context import JobContext, RunContext
from farm.models.compiled import CompileConfig, UNetCompiler
from farm.models.load import load_checkpoint
from farm.nodes.ksampling import SamplerCall, run_sampler_calls
from farm.nodes.values import DiffusionModel, Latent, VaeModel
from farm.sampling import Conditioning
from farm.sampling.model_sampling import DiscreteSchedule

# The oracle (tests/engine/test_oracle.py) holds pixels to 0.01 of full scale. Compiled
# graphs decompose attention and GroupNorm, so float32 sums run in another order; three CFG
# steps of a random-weight UNet amplify that to a few 1e-4 in the latents (measured: 4e-4
# at most), far inside what moves a pixel by 0.01.
LATENT_TOL = 2e-3
CPU = torch.device("cpu")


def test_buckets_and_default_switch():
    config = CompileConfig()
    assert [config.bucket(r) for r in (1, 2, 3, 6, 16, 17, 40)] == [2, 2, 4, 8, 16, 32, 40]
    assert not config.active(CPU) and config.active(torch.device("cuda"))
    assert CompileConfig(enabled=False).active(torch.device("cuda")) is False
    assert UNetCompiler(CompileConfig(), CPU).runner(torch.nn.Linear(1, 1)) is None  # off on the CPU


def _calls(model: DiffusionModel, dim: int, seeds: list[int]) -> list[SamplerCall]:
    g = torch.Generator().manual_seed(3)
    negative = Conditioning(torch.randn(1, 77, dim, generator=g))
    return [SamplerCall(model, seed, 3, 6.5 + i, "euler", "normal",
                        Conditioning(torch.randn(1, 77, dim, generator=g)), negative,
                        Latent(torch.zeros(1, 4, 8, 8)))
            for i, seed in enumerate(seeds)]


def _rc(n: int) -> RunContext:
    return RunContext(CPU, torch.float32, None, None, None, "3", tuple(JobContext(f"p{i}", {}) for i in range(n)))


def test_compiled_latents_equal_eager(tiny_checkpoints, tmp_path):
    ck = load_checkpoint(tiny_checkpoints["tiny-sd15"].single_file, CPU, torch.float32)
    eager = DiffusionModel(ck.unet, DiscreteSchedule.sd(), ck.latent_scale_factor, False, "tiny")
    # Warmed first, as a worker does at start: a random-weight UNet of the architecture, for
    # the two shapes sampled below (1 job: 2 rows; 3 jobs: 6 rows, padded to 8).
    config = CompileConfig(enabled=True, backend="aot_eager", cache_dir=tmp_path / "inductor",
                           warm_shapes=(("tiny-sd15", 1, 8, 8), ("tiny-sd15", 3, 8, 8)))
    compiler = UNetCompiler(config, CPU)
    started = time.perf_counter()
    warmed = compiler.warm(torch.float32)
    print(f"warm-up {time.perf_counter() - started:.1f} s: {warmed}")
    assert set(warmed) == {"tiny-sd15 1x8x8", "tiny-sd15 3x8x8"} and all(s > 0 for s in warmed.values())
    assert list(warmed) == ["tiny-sd15 3x8x8", "tiny-sd15 1x8x8"]  # the largest first: its graph serves both
    # the random-weight UNet is the stage of its layout: compiled, used by no checkpoint yet
    [(label, entry)] = compiler.report().items()
    assert label == "unet:sd15" and entry["checkpoints"] == [] and entry["weight_copies"] == 0
    runner = compiler.runner(ck.unet, "tiny", "sd15")
    assert compiler.runner(ck.unet, "tiny", "sd15") is runner  # one per UNet, made once
    stats = runner.stage.runner.stats
    warmed_shapes = {k: dataclasses.replace(v) for k, v in stats.shapes.items()}
    # each shape called twice while warming: on a GPU the second call records its CUDA graph,
    # so no job's first call captures one (a capture there failed on an H100)
    assert {k: v.calls for k, v in warmed_shapes.items()} == {"2x4x8x8 ctx77": 2, "8x4x8x8 ctx77": 2}
    padded_before = stats.padded_rows
    compiled = dataclasses.replace(eager, runner=runner)
    dim = ck.unet.config.cross_attention_dim

    started = time.perf_counter()
    for seeds in ([11], [21, 22, 23]):  # 2 rows; 6 rows padded to 8
        want = run_sampler_calls(_rc(len(seeds)), _calls(eager, dim, seeds))
        got = run_sampler_calls(_rc(len(seeds)), _calls(compiled, dim, seeds))
        for w, g in zip(want, got):
            print(f"{len(seeds)} job(s): max |compiled - eager| = {(g.samples - w.samples).abs().max():.2e}")
            torch.testing.assert_close(g.samples, w.samples, rtol=LATENT_TOL, atol=LATENT_TOL)
    print(f"compiled tiny UNet and sampled in {time.perf_counter() - started:.1f} s")

    assert stats.fallback is None, stats.fallback  # it really ran compiled
    assert stats.padded_rows - padded_before == 3 * 2  # three steps of 2 padding rows (6 -> 8)
    # the warm-up's shapes, nothing new, and each first call (the compile) was the warm-up's
    assert set(stats.shapes) == set(warmed_shapes) == {"2x4x8x8 ctx77", "8x4x8x8 ctx77"}
    for key, shape in stats.shapes.items():
        assert shape.calls == warmed_shapes[key].calls + 3
        assert shape.first_call_s == warmed_shapes[key].first_call_s
    report = compiler.report()["unet:sd15"]
    assert report["compile_s"] > 0 and report["checkpoints"] == ["tiny"]
    assert report["weight_copies"] == 1  # the checkpoint's weights replaced the random ones, once


def test_checkpoints_of_one_layout_share_one_compiled_stage(tiny_checkpoints, tmp_path):
    """Two checkpoints of one architecture (other weights), in turns: one stage, compiled
    once; each call runs on its own checkpoint's weights, copied in at each switch, and
    again after its weights change in place (what a LoRA does)."""
    from farm.models.compiled_stage import weights_changed
    from farm.models.make import make_checkpoint

    other = tmp_path / "other.safetensors"
    make_checkpoint("tiny-sd15", other, seed=8)
    a = load_checkpoint(tiny_checkpoints["tiny-sd15"].single_file, CPU, torch.float32)
    b = load_checkpoint(other, CPU, torch.float32)
    aside: list[int] = []
    compiler = UNetCompiler(CompileConfig(enabled=True, backend="aot_eager", cache_dir=tmp_path / "inductor"), CPU,
                            set_aside=aside.append)
    run_a, run_b = compiler.runner(a.unet, "a", "sd15"), compiler.runner(b.unet, "b", "sd15")
    assert run_a.stage is run_b.stage
    stage = run_a.stage
    assert stage.module is not a.unet and stage.module is not b.unet  # the checkpoints' own stay untouched
    assert aside == [stage.nbytes] and stage.nbytes == sum(p.numel() * 4 for p in a.unet.parameters()) + sum(
        t.numel() * t.element_size() for t in a.unet.buffers())

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.full((2,), 500.0)
    embeds = torch.randn(2, 77, a.unet.config.cross_attention_dim, generator=g)

    def eager(ck) -> torch.Tensor:
        return ck.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]

    with torch.inference_mode():
        want_a, want_b = eager(a), eager(b)
        assert (want_a - want_b).abs().max() > 1e-2  # other weights, other outputs
        for runner, want in ((run_a, want_a), (run_b, want_b), (run_a, want_a), (run_a, want_a)):
            torch.testing.assert_close(runner(x, t, embeds, None), want, rtol=LATENT_TOL, atol=LATENT_TOL)
    assert stage.copies == 2  # a was its first copy: b, then a again; a twice in a row copies once
    # the stage's attention runs fused projections, the checkpoints' keep q, k, v apart: a
    # change to one part (a LoRA on to_k, say) reaches the stage's fused weight
    assert stage.runner.fused_layers == len([n for n, _ in a.unet.named_modules() if n.endswith((".attn1", ".attn2"))])
    assert stage.runner.fused_layers > 0 and not hasattr(a.unet.mid_block.attentions[0].transformer_blocks[0].attn1,
                                                         "to_qkv")
    with torch.no_grad():
        a.unet.conv_in.weight.mul_(2.0)
        a.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_k.weight.mul_(-3.0)
        a.unet.mid_block.attentions[0].transformer_blocks[0].attn2.to_v.weight.mul_(-3.0)
    weights_changed(a.unet)
    with torch.inference_mode():
        torch.testing.assert_close(run_a(x, t, embeds, None), eager(a), rtol=LATENT_TOL, atol=LATENT_TOL)
    assert stage.copies == 3
    report = compiler.report()["unet:sd15"]
    assert report["checkpoints"] == ["a", "b"] and report["weight_copies"] == 3
    assert report["weight_copy_gpu_s"] is None  # CUDA events time the copies on a GPU only
    assert list(report["shapes"]) == ["2x4x8x8 ctx77"]  # one graph for both checkpoints
    assert stage.runner.stats.fallback is None


def test_compiled_runner_falls_back_to_eager_on_a_compiler_fault():
    class Unet(torch.nn.Module):  # a forward dynamo cannot trace into with this backend
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
            return (x * 2,)

    compiler = UNetCompiler(CompileConfig(enabled=True, backend="no-such-backend"), CPU)
    with pytest.raises(Exception, match="no-such-backend"):
        compiler.runner(Unet(), "bad")  # torch.compile itself names the unknown backend



def test_after_a_fallback_to_eager_a_switch_still_brings_the_checkpoints_weights(tiny_checkpoints, tmp_path):
    """A compiler fault turns the stage eager, and its convolutions back to NCHW: new weight
    tensors. The next checkpoint's weights must land in those, not in the ones left behind."""
    from farm.models.make import make_checkpoint

    def failing_backend(graph_module, example_inputs):
        raise RuntimeError("a compiler fault")

    other = tmp_path / "other.safetensors"
    make_checkpoint("tiny-sd15", other, seed=9)
    a = load_checkpoint(tiny_checkpoints["tiny-sd15"].single_file, CPU, torch.float32)
    b = load_checkpoint(other, CPU, torch.float32)
    compiler = UNetCompiler(CompileConfig(enabled=True, backend=failing_backend, cache_dir=tmp_path / "inductor"), CPU)
    run_a, run_b = compiler.runner(a.unet, "a", "sd15"), compiler.runner(b.unet, "b", "sd15")
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.full((2,), 500.0)
    embeds = torch.randn(2, 77, a.unet.config.cross_attention_dim, generator=g)
    with torch.inference_mode():
        for runner, ck in ((run_a, a), (run_b, b), (run_a, a)):
            want = ck.unet(x, t, encoder_hidden_states=embeds, return_dict=False)[0]
            torch.testing.assert_close(runner(x, t, embeds, None), want, rtol=LATENT_TOL, atol=LATENT_TOL)
    assert "a compiler fault" in run_a.stage.runner.stats.fallback
    assert run_a.stage.copies == 2  # b, then a again


def test_with_compile_off_warm_shapes_do_nothing():
    off = UNetCompiler(CompileConfig(enabled=False, warm_shapes=(("tiny-sd15", 1, 8, 8),)), CPU)
    assert off.warm(torch.float32) == {} and off.report() == {} and off.warmed == {}

def test_warming_compiles_on_the_sampling_thread():
    """Jobs call the compiled UNet on the device's sampling thread (farm.sampling.stage), and
    CUDA graph trees keep per-thread state: a warm-up on the calling thread and the first
    batch's recording on the sampling thread failed the graph's capture on an H100, and the
    UNet fell back to eager. A backend that notes the thread dynamo hands it the graph on."""
    import threading

    threads: list[str] = []

    def recording(gm, _example_inputs):
        threads.append(threading.current_thread().name)
        return gm.forward

    torch._dynamo.reset()
    try:
        compiler = UNetCompiler(CompileConfig(enabled=True, backend=recording,
                                              warm_shapes=(("tiny-sd15", 1, 8, 8),)), CPU)
        assert set(compiler.warm(torch.float32)) == {"tiny-sd15 1x8x8"}
    finally:
        torch._dynamo.reset()
    assert threads and all(name.startswith("sampling-") for name in threads), threads


def test_a_warm_shape_that_is_not_one_is_refused_by_name():
    from farm.errors import ConfigError

    for bad in (("sd3", 8, 64, 64), ("sd15", 0, 64, 64), ("sd15", 8, 64)):
        with pytest.raises(ConfigError, match="warm shape"):
            CompileConfig(warm_shapes=(bad,))


def test_compiled_vae_decode_equals_eager(tiny_checkpoints, tmp_path):
    from farm.models.make import make_checkpoint

    ck = load_checkpoint(tiny_checkpoints["tiny-sd15"].single_file, CPU, torch.float32)
    compiler = UNetCompiler(CompileConfig(enabled=True, backend="aot_eager", cache_dir=tmp_path / "inductor"), CPU)
    decoder = compiler.decoder(ck.vae, "tiny", "sd15")
    assert compiler.decoder(ck.vae, "tiny", "sd15") is decoder  # one per VAE
    assert UNetCompiler(CompileConfig(enabled=True, vae=False), CPU).decoder(ck.vae) is None  # the lever's off switch
    eager, compiled = VaeModel(ck.vae), VaeModel(ck.vae, compiled_decode=decoder)
    g = torch.Generator().manual_seed(5)
    for rows in (1, 3, 2):  # one image; then the dynamic batch dimension
        latents = torch.randn(rows, 4, 8, 8, generator=g)
        torch.testing.assert_close(compiled.decode(latents), eager.decode(latents), rtol=1e-4, atol=1e-4)
    runner = decoder.stage.runner
    assert runner.fallback is None, runner.fallback  # it really ran compiled
    assert runner.calls == 3 and compiler.report()["vae:sd15"]["compile_s"] > 0

    # another checkpoint's VAE of the same layout: the same compiled stage, its own weights
    make_checkpoint("tiny-sd15", tmp_path / "other.safetensors", seed=8)
    other = load_checkpoint(tmp_path / "other.safetensors", CPU, torch.float32)
    other_decoder = compiler.decoder(other.vae, "other", "sd15")
    assert other_decoder.stage is decoder.stage
    for vae, dec in ((other.vae, other_decoder), (ck.vae, decoder)):
        torch.testing.assert_close(VaeModel(vae, compiled_decode=dec).decode(latents), VaeModel(vae).decode(latents),
                                   rtol=1e-4, atol=1e-4)
    assert (VaeModel(other.vae).decode(latents) - eager.decode(latents)).abs().max() > 1e-3
    report = compiler.report()["vae:sd15"]
    assert report["checkpoints"] == ["other", "tiny"] and report["weight_copies"] == 2

    class Interrupted(Exception):
        pass

    def stop() -> None:
        raise Interrupted

    with pytest.raises(Interrupted):  # a compiled decode is one graph: the check runs before it
        compiled.decode(latents, check=stop)
    assert runner.calls == 5


def test_a_thread_without_cuda_graph_state_is_given_its_own():
    """torch before 2.13 asserted (bare AssertionError) in any thread but the importing one
    on a reduce-overhead call; the farm samples on its own thread."""
    import threading

    from torch._inductor import cudagraph_trees as trees

    from farm.models.compiled import adopt_cuda_graph_state

    seen: dict[str, object] = {}

    def fresh_thread() -> None:
        seen["before"] = hasattr(trees.local, "tree_manager_containers")
        adopt_cuda_graph_state()
        seen["local"] = trees.local.tree_manager_containers
        seen["tls"] = torch._C._is_key_in_tls("tree_manager_containers")
        adopt_cuda_graph_state()  # a second call keeps what the first set up
        seen["same"] = trees.local.tree_manager_containers is seen["local"]

    thread = threading.Thread(target=fresh_thread)
    thread.start()
    thread.join()
    assert seen["before"] is False  # a new thread really starts without it
    assert seen["local"] == {} and seen["tls"] is True and seen["same"] is True
    assert seen["local"] is not trees.get_obj(trees.local, "tree_manager_containers")  # its own, not the main thread's


def test_a_graph_serves_the_rows_on_one_side_of_graph_split_rows():
    """Why the bench's and the farm's largest batch stay under 64 UNet rows: diffusers'
    Upsample2D tests the batch against 64, dynamo guards on it, and the other side compiles
    again (a minute or more of inductor on a GPU). A backend that counts the graphs it is
    given, as dynamo hands them over, with the batch dimension dynamic as CompiledUNet marks it."""
    from farm.models.compiled import GRAPH_SPLIT_ROWS, _dummy_inputs, _random_unet

    graphs: list[int] = []

    def counting(gm, _example_inputs):
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    torch._dynamo.reset()
    unet = _random_unet("tiny-sd15", CPU, torch.float32)
    compiled = torch.compile(unet, backend=counting, dynamic=None)
    seen = []
    try:
        # 32 then 16 rows: one side of the split (on a CPU the convolutions' layout choice
        # splits again at 16 rows, so nothing below 16 here), then the split itself
        for rows in (GRAPH_SPLIT_ROWS // 2, GRAPH_SPLIT_ROWS // 4, GRAPH_SPLIT_ROWS):
            x, t, embeds, _ = _dummy_inputs(unet, rows, 8, 8)
            for tensor in (x, t, embeds):
                torch._dynamo.maybe_mark_dynamic(tensor, 0)
            with torch.inference_mode():
                compiled(x, t, encoder_hidden_states=embeds, return_dict=False)
            seen.append(len(graphs))
    finally:
        torch._dynamo.reset()
    assert seen[0] >= 1 and seen[1] == seen[0], seen  # 16 rows reused the 32-row graph
    assert seen[2] > seen[1], seen  # 64 rows compiled another
