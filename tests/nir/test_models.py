import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors_helpers import edit_header
from weights_helpers import flip_a_tensor_byte

import pyg_lecc
from pyg_lecc import NIRGNN, LightweightECC, LocalNonLocalConv, image_knn_graph
from pyg_lecc.io.weight_files import write_weights_file
from pyg_lecc.nir import hub, models
from pyg_lecc.nir.config import NIRGNNConfig
from pyg_lecc.nir.hub import (
    default_weights_path,
    get_model,
    list_models,
    load_weights,
    model_from_weights,
    save_weights,
)
from pyg_lecc.nir.models import matched_cnn_features, num_parameters

TINY = dict(features=6, rank=2, k=4, layers_per_block=1)


def test_public_names():
    for name in pyg_lecc.__all__:
        assert hasattr(pyg_lecc, name), name
    assert {"LightweightECC", "image_knn_graph", "NIRGNN", "nir_gnn"} <= set(pyg_lecc.__all__)


def test_local_non_local_layer_is_equation_1():
    torch.manual_seed(0)
    layer = LocalNonLocalConv(4, 5, rank=2)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 4, 7, 6)
    edge_index = image_knn_graph(x, k=3)
    nodes = x.permute(0, 2, 3, 1).reshape(-1, 4)
    non_local = layer.ecc(nodes, edge_index).view(2, 7, 6, 5).permute(0, 3, 1, 2)
    expected = (layer.local(x) + non_local) / 2 + layer.bias.view(1, -1, 1, 1)
    assert torch.allclose(layer(x, edge_index), expected, atol=1e-6)
    cnn_layer = LocalNonLocalConv(4, 5, non_local=False)
    assert cnn_layer.ecc is None
    assert torch.allclose(cnn_layer(x, None), cnn_layer.local(x) + cnn_layer.bias.view(1, -1, 1, 1))
    with pytest.raises(ValueError, match="edge_index"):
        layer(x, None)


def test_paper_configuration():
    with torch.device("meta"):
        model = NIRGNN()
    eccs = [m for m in model.modules() if isinstance(m, LightweightECC)]
    # 3 branch layers, 3 blocks x 3 layers, 1 output layer.
    assert len(eccs) == 13
    assert {(m.in_channels, m.out_channels, m.rank) for m in eccs} == {
        (33, 33, 11),
        (99, 99, 11),
        (99, 3, 11),
    }
    assert eccs[-1].circulant_stride == (33, 3) and eccs[4].circulant_stride == 33
    assert model.graph.k == 8 and eccs[0].delta == 10.0
    # The CNN baseline of Table I has roughly the same size.
    with torch.device("meta"):
        cnn = get_model("cnn")
    ratio = num_parameters(cnn) / num_parameters(model)
    assert 0.95 < ratio < 1.05
    assert not any(isinstance(m, LightweightECC) for m in cnn.modules())


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_and_learns(name):
    torch.manual_seed(0)
    model = get_model(name, **TINY) if name == "nir-gnn" else get_model(name, features=6, k=4)
    nir = torch.rand(2, 1, 12, 12)
    out = model(nir)
    assert out.shape == (2, 3, 12, 12)
    out.pow(2).mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname


def test_global_residual():
    # A model whose last layer outputs zero returns the NIR image on three channels.
    model = NIRGNN(**TINY).eval()
    with torch.no_grad():
        for p in model.last.parameters():
            p.zero_()
    nir = torch.rand(1, 1, 10, 10)
    assert torch.allclose(model(nir), nir.expand(-1, 3, -1, -1))


def test_matched_cnn_width():
    width = matched_cnn_features(12, rank=2)
    with torch.device("meta"):
        gnn = num_parameters(NIRGNN(features=12, rank=2))
        counts = {
            f: num_parameters(NIRGNN(features=f, rank=2, non_local=False))
            for f in (3, 6, 9, 12, 15, 18, 21, 24)
        }
    assert abs(counts[width] - gnn) == min(abs(c - gnn) for c in counts.values())


def test_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    model = NIRGNN(**TINY).eval()
    path = tmp_path / "w.pt"
    save_weights(model, "nir-gnn", path)
    meta, state = load_weights(path)
    assert meta == {"model": "nir-gnn", "config": model.config()}
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    loaded = get_model("nir-gnn", weights=path)
    nir = torch.rand(1, 1, 9, 9)
    assert torch.equal(loaded(nir), model(nir))
    with pytest.raises(ValueError, match="model 'nir-gnn', not 'cnn'"):
        get_model("cnn", weights=path)


def test_loading_never_runs_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": "nir-gnn", "config": {}, "state_dict": Payload()}, path)
    with pytest.raises(ValueError, match="cannot load weights"):
        load_weights(path)
    bad = tmp_path / "not_weights.pt"
    torch.save({"hello": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a pyg_lecc weights file"):
        load_weights(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        load_weights(tmp_path / "missing.pt")


def test_errors():
    with pytest.raises(ValueError, match="multiple of 3"):
        NIRGNN(features=10)
    with pytest.raises(ValueError, match="unknown model"):
        get_model("unet")
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        NIRGNN(**TINY)(torch.rand(1, 3, 8, 8))


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


# Every kind of damaged weights file, with a fragment of the error it must give.
DAMAGED = {
    "unknown_config_key": r"unknown config key\(s\) \['colour'\]",
    "missing_config_key": r"config lacks \['k'\]",
    "bad_config_value": "invalid config value layers_per_block=True",
    "invalid_config": "multiple of 3",
    "config_tensor_mismatch": r"do not match its config .*: tensors of the wrong shape or type",
    "missing_tensor": r"missing tensors \(1\): last\.bias",
    "nan_tensor": "'last.bias' holds NaN",
    "integer_tensor": r"wrong shape or type \(1\): last\.bias int64\[3\] instead of float32\[3\]",
    "sparse_tensor": "not a mapping of names to dense real CPU tensors",
    "unregistered_model": "unknown model 'resnet'",
    "unsafe_object": "never loaded",
    "random_binary": "not a safetensors file or a PyTorch weights archive",
    "truncated": "not a safetensors file or a PyTorch weights archive",
    "empty": "not a safetensors file or a PyTorch weights archive",
    "foreign_zip": r"the file is damaged \(",
    "flipped_byte": r"the file is damaged \(checksum of member .*data/",
}


def write_damaged_weights(path: Path, kind: str) -> None:
    model = NIRGNN(**TINY)
    config = model.config()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    blob = {"model": "nir-gnn", "config": config, "state_dict": state}
    if kind == "unknown_config_key":
        config["colour"] = 3
    elif kind == "missing_config_key":
        del config["k"]
    elif kind == "bad_config_value":
        config["layers_per_block"] = True
    elif kind == "invalid_config":
        config["features"] = 10
    elif kind == "config_tensor_mismatch":
        config["features"] = 9
    elif kind == "missing_tensor":
        del state["last.bias"]
    elif kind == "nan_tensor":
        state["last.bias"][0] = float("nan")
    elif kind == "integer_tensor":
        state["last.bias"] = state["last.bias"].long()
    elif kind == "sparse_tensor":
        state["last.bias"] = state["last.bias"].to_sparse()
    elif kind == "unregistered_model":
        blob["model"] = "resnet"
    elif kind == "unsafe_object":
        blob["state_dict"] = _Payload()
    buf = io.BytesIO()
    if kind == "foreign_zip":
        with zipfile.ZipFile(buf, "w") as archive:
            archive.writestr("notes.txt", "hello")
    else:
        torch.save(blob, buf)
    data = buf.getvalue()
    if kind == "random_binary":
        data = np.random.default_rng(0).bytes(4096)
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "empty":
        data = b""
    elif kind == "flipped_byte":
        data = flip_a_tensor_byte(data)
    path.write_bytes(data)


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_damaged_weights_raise_value_error(tmp_path, kind, capsys):
    path = tmp_path / f"{kind}.pt"
    write_damaged_weights(path, kind)
    needle = DAMAGED[kind]
    with pytest.raises(ValueError, match=needle) as err:
        model_from_weights(path)
    message = str(err.value)
    assert str(path) in message
    assert "weights_only" not in message  # never advise loading that may run code
    with pytest.raises(ValueError, match=needle):
        get_model("nir-gnn", weights=path)
    assert "pwned" not in capsys.readouterr().out


def test_weights_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_weights(tmp_path)


def test_diverged_model_fails_at_the_graph():
    model = NIRGNN(**TINY).eval()
    with torch.no_grad():
        model.branches[0].convs[0].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or infinite values at 144 of 144 pixels"):
        model(torch.rand(1, 1, 12, 12))


@pytest.mark.parametrize("name", ["nir-gnn", "cnn"])
def test_shipped_weights_are_safetensors_with_their_metadata(name):
    path = default_weights_path(name)
    assert path.suffix == ".safetensors"
    meta, _ = load_weights(path)
    card = json.loads(path.with_suffix(".json").read_text())
    assert meta["model"] == name and meta["config"] == card["config"]
    assert meta["training"]["iterations"] == card["iterations"]


def _copy_shipped(tmp_path: Path, name: str, with_card: bool) -> Path:
    tmp_path.mkdir()
    path = tmp_path / f"{name}.safetensors"
    shutil.copy(default_weights_path(name), path)
    if with_card:
        shutil.copy(default_weights_path(name).with_suffix(".json"), path.with_suffix(".json"))
    return path


@pytest.mark.parametrize("old,new", [('"k": 8', '"k": 9'), ('"delta": 10.0', '"delta": 90.0')])
def test_edited_header_of_shipped_weights_is_refused(tmp_path, old, new):
    # cnn.safetensors predates header hashes: its header's config is compared with the copy
    # in its training metadata and with the model card next to it. nir-gnn.safetensors,
    # written by a later finish, hashes its header.
    def edit(count: int):
        def apply(entries: dict[str, str]) -> None:
            entries["pyg_lecc"] = entries["pyg_lecc"].replace(old, new, count)

        return apply

    intact = _copy_shipped(tmp_path / "intact", "cnn", with_card=True)
    assert load_weights(intact)[0]["config"]["k"] == 8
    alone = _copy_shipped(tmp_path / "alone", "cnn", with_card=False)
    edit_header(alone, edit(1))  # the config, not its copy in the training metadata
    with pytest.raises(ValueError, match=rf"{alone} is damaged: the config in its header, .* "
                       "differs from its training metadata"):  # fmt: skip
        model_from_weights(alone)
    carded = _copy_shipped(tmp_path / "carded", "cnn", with_card=True)
    edit_header(carded, edit(-1))  # every copy in the file
    with pytest.raises(ValueError, match=r"differs from its model card .*cnn\.json"):
        get_model("cnn", weights=carded)
    hashed = _copy_shipped(tmp_path / "hashed", "nir-gnn", with_card=True)
    edit_header(hashed, edit(-1))
    with pytest.raises(ValueError, match=rf"{hashed}: its header was edited or damaged"):
        model_from_weights(hashed)


def test_edited_header_of_new_weights_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(NIRGNN(**TINY), "nir-gnn", path)
    edit_header(path, lambda e: e.update(pyg_lecc=e["pyg_lecc"].replace('"k": 4', '"k": 5')))
    with pytest.raises(ValueError, match=rf"{path}: its header was edited or damaged"):
        model_from_weights(path)


def test_config_is_compared_with_the_tensors_before_anything_is_built(tmp_path, monkeypatch):
    # A small file whose (hashed, intact) header claims a wide model: refused on the meta
    # device, before the model that the claim describes would be allocated.
    path = tmp_path / "w.safetensors"
    model = NIRGNN(**TINY)
    write_weights_file(
        path,
        model.state_dict(),
        {"model": "nir-gnn", "config": {**model.config(), "features": 900}},
    )
    devices = []
    init = NIRGNN.__init__

    def spy(self, *args, **kwargs):
        devices.append(torch.get_default_device().type)
        init(self, *args, **kwargs)

    monkeypatch.setattr(NIRGNN, "__init__", spy)
    with pytest.raises(ValueError, match=rf"{path} is damaged: its tensors do not match") as err:
        model_from_weights(path)
    assert "\n" not in str(err.value)
    assert devices == ["meta"]


def test_cli_refuses_a_config_its_tensors_contradict_with_exit_code_2(tmp_path, capsys):
    from pyg_lecc.nir.cli import main

    path = tmp_path / "w.safetensors"
    model = NIRGNN(**TINY)
    config = {**model.config(), "features": 30000}
    write_weights_file(path, model.state_dict(), {"model": "nir-gnn", "config": config})
    assert main(["colorize", "--demo", "-o", str(tmp_path / "out"), "--weights", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"{path} is damaged: its tensors do not match" in error


@pytest.mark.parametrize("label,non_local", [("cnn", True), ("nir-gnn", False)])
def test_weights_labelled_as_the_other_model_are_refused(tmp_path, label, non_local):
    path = tmp_path / "w.safetensors"
    model = NIRGNN(**TINY, non_local=non_local)
    write_weights_file(path, model.state_dict(), {"model": label, "config": model.config()})
    kind = "NIR-GNN" if non_local else "CNN baseline"
    match = rf"{path} is damaged: it is labelled '{label}', but its config describes a {kind}"
    with pytest.raises(ValueError, match=match):
        get_model(label, weights=path)
    with pytest.raises(ValueError, match=match):
        load_weights(path)
    with pytest.raises(ValueError, match=rf"a {kind} \(non_local={non_local}\), not a '{label}'"):
        save_weights(model, label, path)


# --------------------------------------------------------------------------------------------
# The architecture schema (NIRGNNConfig) and the hub
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "must"),
    [
        ("features", 10, "a positive multiple of 3"),
        ("features", 0, "a positive multiple of 3"),
        ("rank", 0, "an integer of at least 1"),
        ("rank", 2.0, "an integer of at least 1"),
        ("k", True, "an integer of at least 1"),
        ("layers_per_block", "3", "an integer of at least 1"),
        ("delta", 0.0, "a positive finite number"),
        ("delta", float("inf"), "a positive finite number"),
        ("non_local", 1, "True or False"),
    ],
)
def test_config_errors_name_the_field(field, value, must):
    with pytest.raises(ValueError, match=rf"NIRGNNConfig: {field} must be {must}, got "):
        NIRGNNConfig(**{field: value})
    with pytest.raises(ValueError, match=rf"{field} must be {must}"):
        NIRGNN(**{field: value})


def test_config_is_the_model_architecture():
    arch = NIRGNNConfig(features=6, rank=2, k=4, layers_per_block=1)
    model = NIRGNN(arch)
    assert model.arch == arch and model.config() == arch.to_dict()
    assert NIRGNN(**TINY).arch == arch  # keyword arguments build the same config
    assert NIRGNN(arch, rank=3).arch.rank == 3  # and replace its fields
    assert list(arch.to_dict()) == [
        "features",
        "rank",
        "delta",
        "k",
        "non_local",
        "layers_per_block",
    ]
    assert NIRGNNConfig(delta=10).delta == 10.0 and isinstance(NIRGNNConfig(delta=10).delta, float)


def test_config_from_a_header_refuses_unknown_keys_and_wrong_types():
    config = NIRGNNConfig().to_dict()
    assert NIRGNNConfig.from_dict(config, "w.safetensors") == NIRGNNConfig()
    with pytest.raises(ValueError, match=r"w\.st is damaged: unknown config key\(s\) \['colour'\]"):
        NIRGNNConfig.from_dict({**config, "colour": 1}, "w.st")
    with pytest.raises(ValueError, match=r"w\.st is damaged: config lacks \['delta'\]"):
        NIRGNNConfig.from_dict({k: v for k, v in config.items() if k != "delta"}, "w.st")
    with pytest.raises(ValueError, match=r"w\.st is damaged: invalid config value rank='4'"):
        NIRGNNConfig.from_dict({**config, "rank": "4"}, "w.st")
    with pytest.raises(ValueError, match=r"w\.st is damaged: 'config' is not a dict, got list"):
        NIRGNNConfig.from_dict([1], "w.st")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_header_round_trip(tmp_path, suffix):
    model = NIRGNN(**TINY, delta=5.0)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":  # the archive format of older versions, with the config they wrote
        state = model.state_dict()
        torch.save({"model": "nir-gnn", "config": model.config(), "state_dict": state}, path)
    else:
        save_weights(model, "nir-gnn", path)
    meta, _ = load_weights(path)
    assert meta["config"] == model.config()
    assert NIRGNNConfig.from_dict(meta["config"], path) == model.arch
    assert model_from_weights(path)[0].arch == model.arch


@pytest.mark.parametrize("name", ["nir-gnn", "cnn"])
def test_shipped_weights_load_with_the_config_of_their_card(name):
    path = default_weights_path(name)
    before = path.read_bytes()
    model = get_model(name, weights="default")
    card = json.loads(path.with_suffix(".json").read_text())
    assert model.arch == NIRGNNConfig(**card["config"])
    assert path.read_bytes() == before  # loading never rewrites them


def test_names_moved_to_the_hub_still_import_from_models_with_a_warning():
    with pytest.warns(DeprecationWarning, match=r"pyg_lecc\.nir\.hub\.load_weights"):
        assert models.load_weights is hub.load_weights
    for name in hub.__all__:
        with pytest.warns(DeprecationWarning, match=f"moved to pyg_lecc.nir.hub.{name}"):
            assert getattr(models, name) is getattr(hub, name)
    with pytest.raises(AttributeError):
        models.no_such_name  # noqa: B018
    assert pyg_lecc.nir_gnn is hub.nir_gnn and pyg_lecc.NIRGNN is NIRGNN


def test_state_mismatch_is_one_short_line():
    state = NIRGNN(**TINY).state_dict()
    assert hub.state_mismatch(state, state) == ""
    wider = NIRGNN(**{**TINY, "features": 9}).state_dict()
    message = hub.state_mismatch(state, wider)
    assert message.startswith("tensors of the wrong shape or type (") and "\n" not in message
