"""Where a sweep's outputs go, through fsspec: memory:// and file:// here, a plain folder,
and a relative folder refused inside a Ray job."""
import pytest

from jobs.destination import RAY_JOB_ENV, Destination, DestinationError


def test_manifest_round_trip_and_files_on_memory_fs(tmp_path):
    dest = Destination("memory://sweeps/one")
    assert dest.read_manifest() == []
    png = tmp_path / "a.png"
    png.write_bytes(b"\x89PNG fake")
    url = dest.put(png, "k_00.png")
    assert url.startswith("memory://") and url.endswith("sweeps/one/k_00.png")
    assert dest.fs.cat(url) == b"\x89PNG fake"
    dest.write_manifest([{"key": "k", "status": "success"}, {"key": "j", "status": "failed"}])
    assert [e["key"] for e in Destination("memory://sweeps/one").read_manifest()] == ["k", "j"]


def test_a_torn_manifest_line_is_skipped(tmp_path):
    dest = Destination(f"file://{tmp_path}/out")
    (tmp_path / "out" / "manifest.jsonl").write_text('{"key": "a", "status": "success"}\n{"key": "b", "sta')
    assert [e["key"] for e in dest.read_manifest()] == ["a"]
    assert dest.manifest_url == f"file://{tmp_path}/out/manifest.jsonl"


def test_a_relative_folder_is_resolved_here_but_refused_inside_a_ray_job(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    assert Destination("renders").manifest_url == str(tmp_path / "renders" / "manifest.jsonl")
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    with pytest.raises(DestinationError, match="--output-dir renders is relative.*absolute folder on the head"):
        Destination("renders")
    assert Destination(str(tmp_path / "abs")).manifest_url == str(tmp_path / "abs" / "manifest.jsonl")


def test_an_unknown_protocol_is_a_clear_error():
    with pytest.raises(DestinationError, match="nosuchfs"):
        Destination("nosuchfs://x/y")
