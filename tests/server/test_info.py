"""/object_info, /system_stats, /models, /embeddings, /features, and the farm routes'
OpenAPI, on a real server without a farm."""
from __future__ import annotations

from farm.nodes.spec import Limits

CORE_NODES = {"CheckpointLoaderSimple", "CLIPTextEncode", "CLIPSetLastLayer", "EmptyLatentImage", "KSampler",
              "KSamplerAdvanced", "VAEDecode", "VAEEncode", "LoadImage", "SaveImage", "PreviewImage",
              "LatentUpscale", "ImageScale"}


def test_object_info_lists_core_nodes_with_comfyui_fields(server):
    with server.client() as http:
        info = http.get("/object_info").json()
        assert http.get("/api/object_info").json() == info
    assert CORE_NODES <= set(info)
    ksampler = info["KSampler"]
    for key in ("input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
                "category", "output_node"):
        assert key in ksampler, key
    assert ksampler["output"] == ["LATENT"] and ksampler["output_node"] is False
    assert ksampler["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler",
                                                   "positive", "negative", "latent_image", "denoise"]
    assert info["SaveImage"]["output_node"] is True


def test_object_info_reflects_configured_limits(start_server):
    srv = start_server(limits=Limits(max_width=1024, max_height=768, max_batch_size=8, max_steps=50))
    with srv.client() as http:
        latent = http.get("/object_info/EmptyLatentImage").json()["EmptyLatentImage"]["input"]["required"]
        ksampler = http.get("/object_info/KSampler").json()["KSampler"]["input"]["required"]
    assert latent["width"][1]["max"] == 1024
    assert latent["height"][1]["max"] == 768
    assert latent["batch_size"][1]["max"] == 8
    assert ksampler["steps"][1]["max"] == 50


def test_object_info_one_class(server):
    with server.client() as http:
        one = http.get("/object_info/VAEDecode").json()
        unknown = http.get("/object_info/NoSuchNode")
    assert list(one) == ["VAEDecode"]
    assert {name: spec[0] for name, spec in one["VAEDecode"]["input"]["required"].items()} == {
        "samples": "LATENT", "vae": "VAE"}
    assert unknown.status_code == 200 and unknown.json() == {}


def test_checkpoint_choices_follow_the_models_folder(server):
    ckpts = server.config.models_dir / "checkpoints"
    (ckpts / "sub").mkdir(parents=True)
    (ckpts / "b.safetensors").write_bytes(b"")
    (ckpts / "sub" / "a.safetensors").write_bytes(b"")
    with server.client() as http:
        loader = http.get("/object_info/CheckpointLoaderSimple").json()["CheckpointLoaderSimple"]
        assert loader["input"]["required"]["ckpt_name"][0] == ["b.safetensors", "sub/a.safetensors"]
        assert http.get("/models/checkpoints").json() == ["b.safetensors", "sub/a.safetensors"]


def test_models_and_embeddings(server):
    emb = server.config.models_dir / "embeddings"
    emb.mkdir()
    (emb / "style.safetensors").write_bytes(b"")
    with server.client() as http:
        assert http.get("/models").json() == ["checkpoints", "loras", "vae", "embeddings", "controlnet",
                                              "upscale_models"]
        assert http.get("/models/loras").json() == []
        assert http.get("/models/nonsense").status_code == 404
        assert http.get("/embeddings").json() == ["style"]


def test_system_stats_without_a_farm(server):
    with server.client() as http:
        stats = http.get("/system_stats").json()
    assert stats["devices"] == []  # devices are the farm's GPUs
    system = stats["system"]
    for key in ("os", "ram_total", "ram_free", "comfyui_version", "python_version", "pytorch_version",
                "embedded_python", "argv"):
        assert key in system, key
    assert 0 < system["ram_free"] <= system["ram_total"]


def test_features(start_server):
    srv = start_server(max_body_bytes=5 * 2**20)
    with srv.client() as http:
        assert http.get("/features").json()["max_upload_size"] == 5 * 2**20


def test_routes_that_need_the_farm_say_so(server):
    with server.client() as http:
        for method, path in (("GET", "/prompt"), ("GET", "/queue"), ("GET", "/history"), ("GET", "/workers"),
                             ("GET", "/api/jobs"), ("POST", "/interrupt"), ("POST", "/api/jobs/x/cancel")):
            answer = http.request(method, path)
            assert answer.status_code == 503, path
            assert "no farm" in answer.json()["error"]


def test_openapi_describes_the_farm_routes(server):
    with server.client() as http:
        schema = http.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/workers", "/batch"}
    assert "overrides" in schema["components"]["schemas"]["BatchRequest"]["properties"]


def test_object_info_serves_the_lora_and_inpainting_nodes(server):
    loras = server.config.models_dir / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    (loras / "style.safetensors").write_bytes(b"")
    with server.client() as http:
        info = http.get("/object_info").json()
    lora = info["LoraLoader"]
    assert lora["input_order"]["required"] == ["model", "clip", "lora_name", "strength_model", "strength_clip"]
    assert lora["input"]["required"]["lora_name"][0] == ["style.safetensors"]
    strength = lora["input"]["required"]["strength_model"]
    assert strength[0] == "FLOAT"
    assert {k: strength[1][k] for k in ("default", "min", "max", "step")} == {
        "default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
    assert lora["output"] == ["MODEL", "CLIP"] and info["LoraLoaderModelOnly"]["output"] == ["MODEL"]
    assert info["InpaintModelConditioning"]["output_name"] == ["positive", "negative", "latent"]
    assert info["VAEEncodeForInpaint"]["input"]["required"]["grow_mask_by"][1]["default"] == 6
    for name in ("SetLatentNoiseMask", "LatentUpscaleBy", "RepeatLatentBatch", "LatentFromBatch", "ImageScaleBy",
                 "ImageScaleToTotalPixels", "ImageInvert", "LoadImageMask", "ConditioningConcat"):
        assert info[name]["name"] == name and info[name]["python_module"] == "nodes"
