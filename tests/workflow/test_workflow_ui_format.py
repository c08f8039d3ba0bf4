import json
from pathlib import Path

import pytest

from farm.errors import WorkflowFormatError
from farm.nodes.registry import default_registry
from farm.nodes.spec import NodeContext
from farm.workflow.graph import parse_workflow
from farm.workflow.ui_format import is_ui_format, ui_to_api
from farm.workflow.validate import validate

DATA = Path(__file__).parent / "data"


def load(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def node(node_id, type_, inputs=(), widgets=(), mode=0, title=None, outputs=()):
    entry = {"id": node_id, "type": type_, "mode": mode, "inputs": list(inputs), "outputs": list(outputs),
             "widgets_values": list(widgets)}
    if title:
        entry["title"] = title
    return entry


def slot(name, type_, link):
    return {"name": name, "type": type_, "link": link}


def test_sample_ui_graph_converts_to_its_api_twin():
    ui = load("txt2img_ui.json")
    assert is_ui_format(ui) and not is_ui_format(load("txt2img_api.json"))
    assert ui_to_api(ui, default_registry()) == load("txt2img_api.json")


def test_converted_sample_validates(tmp_path):
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "models" / "checkpoints" / "sd15-base.safetensors").write_bytes(b"")
    api = ui_to_api(load("txt2img_ui.json"), default_registry())
    result = validate(parse_workflow(api), default_registry(), NodeContext.under(tmp_path))
    assert result.ok and result.outputs_to_execute == ["9"]


def sampler_chain(upscale_mode: int, preview_mode: int = 0) -> dict:
    """EmptyLatent(1) -> LatentUpscale(2) -> VAEDecode(3) -> PreviewImage(4); VAE from loader 5."""
    return {"nodes": [
        node(5, "CheckpointLoaderSimple", widgets=["m.safetensors"]),
        node(1, "EmptyLatentImage", widgets=[512, 512, 1]),
        node(2, "LatentUpscale", [slot("samples", "LATENT", 1)], ["bilinear", 768, 768, "disabled"],
             mode=upscale_mode),
        node(3, "VAEDecode", [slot("samples", "LATENT", 2), slot("vae", "VAE", 3)]),
        node(4, "PreviewImage", [slot("images", "IMAGE", 4)], mode=preview_mode),
    ], "links": [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "LATENT"], [3, 5, 2, 3, 1, "VAE"],
                 [4, 3, 0, 4, 0, "IMAGE"]]}


def test_bypassed_node_passes_its_matching_input_through():
    api = ui_to_api(sampler_chain(upscale_mode=4), default_registry())
    assert "2" not in api
    assert api["3"]["inputs"] == {"samples": ["1", 0], "vae": ["5", 2]}


def test_active_node_is_kept():
    api = ui_to_api(sampler_chain(upscale_mode=0), default_registry())
    assert api["2"]["inputs"] == {"upscale_method": "bilinear", "width": 768, "height": 768, "crop": "disabled",
                                  "samples": ["1", 0]}
    assert api["3"]["inputs"]["samples"] == ["2", 0]


def test_muted_nodes_and_their_links_are_dropped():
    api = ui_to_api(sampler_chain(upscale_mode=2, preview_mode=2), default_registry())
    assert set(api) == {"1", "3", "5"}
    assert api["3"]["inputs"] == {"vae": ["5", 2]}  # its source is muted: validation will say it is missing


def test_seed_control_value_is_skipped():
    ui = {"nodes": [node(1, "KSamplerAdvanced",
                         widgets=["enable", 7, "randomize", 30, 6.5, "euler", "karras", 2, 25, "enable"])],
          "links": []}
    assert ui_to_api(ui, default_registry())["1"]["inputs"] == {
        "add_noise": "enable", "noise_seed": 7, "steps": 30, "cfg": 6.5, "sampler_name": "euler",
        "scheduler": "karras", "start_at_step": 2, "end_at_step": 25, "return_with_leftover_noise": "enable"}


def test_load_image_upload_widget_value_is_ignored_and_titles_default_to_display_name():
    ui = {"nodes": [node(1, "LoadImage", widgets=["cat.png", "image"])], "links": []}
    assert ui_to_api(ui, default_registry()) == {
        "1": {"inputs": {"image": "cat.png"}, "class_type": "LoadImage", "_meta": {"title": "Load Image"}}}


def test_widgets_values_saved_as_an_object():
    ui = {"nodes": [node(1, "EmptyLatentImage")], "links": []}
    ui["nodes"][0]["widgets_values"] = {"width": 640, "height": 480, "batch_size": 3}
    assert ui_to_api(ui, default_registry())["1"]["inputs"] == {"width": 640, "height": 480, "batch_size": 3}


def test_unknown_node_type_is_kept_for_validation(tmp_path):
    ui = {"nodes": [node(1, "FancyUpscaler", [slot("image", "IMAGE", 1)], widgets=[2.0], title="Fancy"),
                    node(2, "LoadImage", widgets=["cat.png", "image"])],
          "links": [[1, 2, 0, 1, 0, "IMAGE"]]}
    api = ui_to_api(ui, default_registry())
    assert api["1"] == {"inputs": {"image": ["2", 0]}, "class_type": "FancyUpscaler", "_meta": {"title": "Fancy"}}
    result = validate(parse_workflow(api), default_registry(), NodeContext.under(tmp_path))
    assert result.error.to_comfy()["type"] == "missing_node_type"


def test_links_in_object_form():
    ui = sampler_chain(upscale_mode=0)
    ui["links"] = [{"id": l[0], "origin_id": l[1], "origin_slot": l[2], "target_id": l[3], "target_slot": l[4],
                    "type": l[5]} for l in ui["links"]]
    assert ui_to_api(ui, default_registry()) == ui_to_api(sampler_chain(upscale_mode=0), default_registry())


@pytest.mark.parametrize("ui, fragment", [
    ({"nodes": [{"id": 1}], "links": []}, '"id" and "type"'),
    ({"nodes": [node(1, "VAEDecode", inputs=[5])], "links": []}, "inputs must be a list of objects"),
    ({"nodes": [], "links": [[1, 2]]}, "links[0]"),
    ({"nodes": [], "links": {}}, '"links" must be a list'),
    ({"nodes": [node(1, "0f6c-sub")], "links": [], "definitions": {"subgraphs": [{"id": "0f6c-sub"}]}},
     "subgraph"),
])
def test_malformed_ui_graphs_are_refused(ui, fragment):
    with pytest.raises(WorkflowFormatError) as info:
        ui_to_api(ui, default_registry())
    assert fragment in str(info.value)
