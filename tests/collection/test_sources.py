from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from geosane import storage
from geosane.collection import Collection, formats, sources
from geosane.collection.formats import KEY_ORDER
from geosane.errors import GeoSANEError

from ..helpers import TIMM_MODELS, Exploit, assert_bit_exact
from .helpers import collect_and_export, timm_state


def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(5, 4, 3), torch.nn.BatchNorm2d(4)).state_dict()


def test_safetensors_and_torch_files_read_the_same(tmp_path: Path) -> None:
    sd = tiny_state()
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "a.safetensors")
    torch.save(sd, tmp_path / "b.pt")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "c.ckpt")
    torch.save({"model": sd, "optimizer": {"lr": 0.1}}, tmp_path / "d.pth")
    # safetensors sorts its keys; GeoSANE records the original order in the file's metadata
    order = {KEY_ORDER: json.dumps(list(sd))}
    save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "e.safetensors", metadata=order)
    assert sorted(sources.load(str(tmp_path / "a.safetensors")).state_dict) == sorted(sd)
    for name in ("e.safetensors", "b.pt", "c.ckpt", "d.pth"):
        source = sources.load(str(tmp_path / name))
        assert list(source.state_dict) == list(sd), name
        assert all(torch.equal(source.state_dict[k], v) for k, v in sd.items()), name
        assert source.in_chans == 5 and len(source.sha256) == 64


def test_directories_expand_recursively_and_skip_other_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    torch.save(tiny_state(), tmp_path / "sub" / "m.pt")
    save_file({"w.weight": torch.ones(2, 2)}, tmp_path / "a.safetensors")
    (tmp_path / "config.json").write_text("{}")
    found = sources.find([str(tmp_path)])
    assert [Path(f.uri).name for f in found] == ["a.safetensors", "m.pt"]
    assert [f.name for f in found] == ["a", "sub/m"]
    assert list(found[1].read().state_dict) == list(tiny_state())


def test_pickle_with_code_is_refused_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(1), "payload": Exploit(str(marker))}, path)
    with pytest.raises(GeoSANEError, match="refused to load.*never runs code"):
        sources.load(str(path))
    assert not marker.exists()
    # a raw pickle (not torch's zip format) is refused as well
    raw = tmp_path / "raw.bin"
    raw.write_bytes(pickle.dumps(Exploit(str(marker))))
    with pytest.raises(GeoSANEError, match="raw.bin"):
        sources.load(str(raw))
    assert not marker.exists()


def test_bad_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GeoSANEError, match="missing.pt: no such file"):
        sources.find([str(tmp_path / "missing.pt")])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(GeoSANEError, match="notes.txt: unsupported file type"):
        sources.find([str(tmp_path / "notes.txt")])
    good = tmp_path / "good.safetensors"
    save_file({"a.weight": torch.randn(64, 64)}, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(GeoSANEError, match="truncated.safetensors: not a valid safetensors"):
        sources.load(str(truncated))
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(GeoSANEError, match="expected a state dict, got a list"):
        sources.load(str(tmp_path / "list.pt"))
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(GeoSANEError, match="broken.onnx: not a valid ONNX"):
        sources.load(str(tmp_path / "broken.onnx"))


@pytest.mark.parametrize(
    "recorded, message",
    [
        (["a.weight"], r"must list exactly the file's 2 tensors, once each; it leaves out \['b.bias'\]"),
        (["a.weight", "b.bias", "c"], r"it names \['c'\], which the file does not hold"),
        (["a.weight", "a.weight"], "once each; it leaves out"),
    ],
)
def test_key_order_metadata_must_name_exactly_the_files_tensors(tmp_path: Path, recorded: list, message: str) -> None:
    """A ``geosane_keys`` that names a subset would silently drop tensors at collect."""
    path = tmp_path / "m.safetensors"
    save_file({"a.weight": torch.ones(2, 2), "b.bias": torch.ones(2)}, path, metadata={KEY_ORDER: json.dumps(recorded)})
    with pytest.raises(GeoSANEError, match=message):
        sources.load(str(path))
    save_file({"a.weight": torch.ones(2, 2), "b.bias": torch.ones(2)}, path, metadata={KEY_ORDER: "not json"})
    with pytest.raises(GeoSANEError, match="is not a JSON list of tensor names"):
        sources.load(str(path))


def test_timm_sources() -> None:
    source = sources.load("timm:test_resnet?in_chans=13&num_classes=7&seed=1")
    assert source.family == "resnet" and source.in_chans == 13 and source.num_classes == 7
    stem = next(t for t in source.state_dict.values() if t.dim() == 4)
    assert stem.shape[1] == 13
    again = sources.load("timm:test_resnet?in_chans=13&num_classes=7&seed=1")
    assert again.sha256 == source.sha256, "the same seed must give the same weights"
    other = sources.load("timm:test_resnet?in_chans=13&num_classes=7&seed=2")
    assert other.sha256 != source.sha256
    with pytest.raises(GeoSANEError, match="unknown timm model 'resnet_18'.*did you mean.*resnet18"):
        sources.load("timm:resnet_18")
    with pytest.raises(GeoSANEError, match=r"unknown option\(s\) \['chans'\]"):
        sources.load("timm:resnet18?chans=4")


def test_timm_with_local_pretrained_file(tmp_path: Path) -> None:

    torch.manual_seed(5)
    trained = timm.create_model("test_vit", pretrained=False, num_classes=4).state_dict()
    save_file({k: v.contiguous() for k, v in trained.items()}, tmp_path / "vit.safetensors")
    file = tmp_path / "vit.safetensors"
    source = sources.load(f"timm:test_vit?num_classes=4&pretrained={file}")
    assert all(torch.equal(source.state_dict[k], v) for k, v in trained.items())
    # timm adapts the RGB stem to 7 bands and re-initializes a head of another class count
    adapted = sources.load(f"timm:test_vit?num_classes=2&in_chans=7&pretrained={file}").state_dict
    assert adapted["patch_embed.proj.weight"].shape[1] == 7 and adapted["head.weight"].shape[0] == 2
    assert torch.equal(adapted["blocks.0.attn.qkv.weight"], trained["blocks.0.attn.qkv.weight"])
    with pytest.raises(GeoSANEError, match="does not fit test_resnet"):
        sources.load(f"timm:test_resnet?pretrained={file}")


def test_onnx_initializers_are_read_without_running_the_model(tmp_path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(6, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1)
    )
    model.eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(1, 6, 16, 16),), buffer, dynamo=False)
    (tmp_path / "net.onnx").write_bytes(buffer.getvalue())
    source = sources.load(str(tmp_path / "net.onnx"))
    graph = onnx.load(str(tmp_path / "net.onnx")).graph
    assert sorted(source.state_dict) == sorted(init.name for init in graph.initializer)
    for init in graph.initializer:
        assert torch.equal(source.state_dict[init.name], torch.from_numpy(numpy_helper.to_array(init).copy()))
    # ordered by first use in the graph: the stem comes first, so its input channels are the model's
    assert source.in_chans == 6 and source.state_dict[next(iter(source.state_dict))].shape == (8, 6, 3, 3)


@pytest.mark.parametrize("in_chans", [3, 13])
@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_models_export_bit_exact(tmp_path: Path, name: str, in_chans: int) -> None:
    sd = timm_state(name, in_chans=in_chans, num_classes=10)
    assert_bit_exact(sd, collect_and_export(f"file://{tmp_path}/c", sd))


TORCHGEO_MODELS = {
    "resnet18": lambda m: m.resnet18(weights=None, in_chans=13),
    "vit_small_patch16_224": lambda m: m.vit_small_patch16_224(weights=None, in_chans=13),
    "swin_t": lambda m: m.swin_t(weights=None),
    "dofa_small_patch16_224": lambda m: m.dofa_small_patch16_224(),
    "farseg": lambda m: m.FarSeg(backbone="resnet18", classes=4, backbone_pretrained=False),
    "fcsiamdiff": lambda m: m.FCSiamDiff(in_channels=4, classes=2, encoder_weights=None),
}


@pytest.mark.parametrize("name", TORCHGEO_MODELS)
def test_torchgeo_models_export_bit_exact(tmp_path: Path, name: str) -> None:
    import torchgeo.models

    torch.manual_seed(0)
    sd = TORCHGEO_MODELS[name](torchgeo.models).state_dict()
    assert_bit_exact(sd, collect_and_export(str(tmp_path / "c"), sd, mode="per-channel"))


def test_real_pretrained_weights_export_bit_exact(tmp_path: Path, shared: Path) -> None:
    files = [shared / "weights/presto/default_model.pt"] + sorted((shared / "weights/galileo_nano").glob("*.pt"))
    uris = [f.uri for f in sources.find([str(f) for f in files])]
    collection = Collection(str(tmp_path / "c"))
    added = collection.add((sources.load(u) for u in uris), progress=False)
    assert len(added) == 5
    for uri, record in zip(uris, added, strict=True):
        original = torch.load(uri, map_location="cpu", weights_only=True)
        assert_bit_exact(original, collection.export(record.id))
        assert record.source_sha256 == __import__("hashlib").sha256(Path(uri).read_bytes()).hexdigest()


@pytest.mark.parametrize("group", ["ukis-csmask-1.0.0", "ukis-csmask-0.2.1"])
def test_real_onnx_specialists_export_bit_exact(tmp_path: Path, group: str) -> None:
    """The ukis-csmask cloud/shadow U-Nets, read from their registry wheels (set-up downloads them)."""
    from geosane.collection import pretrained

    uri = next(u for u in pretrained.expand(f"pretrained:{group}") if "6b" in u)
    collection = Collection(str(tmp_path / "c"))
    record = collection.add([sources.load(uri)], progress=False)[0]
    assert record.in_chans == 6 and record.bands == pretrained.S2_6 and record.licence == "Apache-2.0"
    assert record.num_params > (19_000_000 if group.endswith("1.0.0") else 7_000_000)
    location = pretrained.location(uri)
    original = formats.read_onnx(storage.read_bytes(location), location)
    assert_bit_exact(original, collection.export(record.id))
