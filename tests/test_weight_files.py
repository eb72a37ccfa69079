import json

import pytest
import safetensors.torch
import torch
from safetensors_helpers import edit_header

from pyg_lecc.io.weight_files import read_weights_file, tensors_sha256, write_weights_file


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=gen),
        "norm.num_batches_tracked": torch.tensor(7),  # 0-dim, int64
        "half": torch.randn(5, generator=gen).to(torch.bfloat16),
        "empty": torch.zeros(0, 3),
    }


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    metadata = {"model": "nir-gnn", "config": {"features": 6}, "training": {"iterations": 12}}
    write_weights_file(path, _state(), metadata)
    meta, state = read_weights_file(path)
    assert meta == metadata
    expected = _state()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor)
    assert not path.read_bytes().startswith(b"PK")  # not a pickle-bearing zip archive


def test_a_flipped_bit_in_a_tensor_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    write_weights_file(path, _state(), {"model": "x"})
    data = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    data[header_end + 5] ^= 0x04  # inside conv.weight's bytes: safetensors itself loads it
    path.write_bytes(bytes(data))
    assert safetensors.torch.load_file(path)["conv.weight"].shape == (4, 3, 3, 3)
    with pytest.raises(ValueError, match="do not match the hash stored in its header"):
        read_weights_file(path)


@pytest.mark.parametrize("cut", [0, 5, 40, -3])
def test_truncated_or_foreign_files_are_refused(tmp_path, cut):
    path = tmp_path / "w.safetensors"
    write_weights_file(path, _state(), {"model": "x"})
    data = path.read_bytes()
    path.write_bytes(data[:cut])
    with pytest.raises(ValueError, match=r"not a safetensors file or a PyTorch weights archive"):
        read_weights_file(path)


def test_a_safetensors_file_without_our_header_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"a": torch.ones(2)}, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a pyg_lecc weights file"):
        read_weights_file(path)


def test_hash_covers_names_dtypes_shapes_and_bytes():
    state = _state()
    reference = tensors_sha256(state)
    assert tensors_sha256(dict(reversed(list(state.items())))) == reference  # order-free
    changed = [
        {**state, "conv.weight": state["conv.weight"].reshape(12, 9)},  # same bytes
        {**state, "conv.weight": state["conv.weight"].double().float() + 1e-6},
        {**state, "empty": torch.zeros(0, 4)},
        {**state, "norm.num_batches_tracked": torch.tensor(7, dtype=torch.int32)},
        {("renamed" if k == "half" else k): v for k, v in state.items()},
    ]
    assert len({reference, *map(tensors_sha256, changed)}) == len(changed) + 1


# Torch archives of earlier releases still load; one named .safetensors is read by its
# content (torch.load took the name for the format).
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_earlier_torch_archives_still_load(tmp_path, suffix):
    path = tmp_path / f"old{suffix}"
    blob = {"model": "cnn", "config": {"features": 3}, "state_dict": _state()}
    torch.save(blob, path)
    meta, state = read_weights_file(path)
    assert meta == {"model": "cnn", "config": {"features": 3}}
    assert all(torch.equal(state[k], v) for k, v in _state().items())


def test_write_replaces_atomically(tmp_path):
    path = tmp_path / "w.safetensors"
    write_weights_file(path, {"a": torch.ones(2)}, {"n": 1})
    write_weights_file(path, {"a": torch.zeros(2)}, {"n": 2})
    meta, state = read_weights_file(path)
    assert meta == {"n": 2} and torch.equal(state["a"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    header = json.loads(path.read_bytes()[8 : 8 + int.from_bytes(path.read_bytes()[:8], "little")])
    assert set(header["__metadata__"]) == {"pyg_lecc", "sha256", "metadata_sha256"}


def _replace(key: str, old: str, new: str):
    def edit(entries: dict[str, str]) -> None:
        assert old in entries[key]
        entries[key] = entries[key].replace(old, new)

    return edit


@pytest.mark.parametrize("old,new", [('"k": 8', '"k": 9'), ('"delta": 10.0', '"delta": 90.0')])
def test_an_edited_header_is_refused(tmp_path, old, new):
    path = tmp_path / "w.safetensors"
    write_weights_file(path, _state(), {"model": "nir-gnn", "config": {"k": 8, "delta": 10.0}})
    edit_header(path, _replace("pyg_lecc", old, new))
    with pytest.raises(ValueError, match=rf"{path}: its header was edited or damaged"):
        read_weights_file(path)


def test_a_header_moved_onto_other_tensors_is_refused(tmp_path):
    # Both hashes are intact, but the header's hash binds it to the tensors it was written with.
    donor, path = tmp_path / "donor.safetensors", tmp_path / "w.safetensors"
    write_weights_file(donor, {"a": torch.ones(2)}, {"model": "cnn"})
    write_weights_file(path, {"a": torch.zeros(2)}, {"model": "nir-gnn"})
    moved = json.loads(donor.read_bytes()[8 : 8 + int.from_bytes(donor.read_bytes()[:8], "little")])
    edit_header(path, lambda entries: entries.update(
        {k: v for k, v in moved["__metadata__"].items() if k != "sha256"}
    ))  # fmt: skip
    with pytest.raises(ValueError, match="its header was edited or damaged"):
        read_weights_file(path)


def test_headers_written_before_header_hashes_go_to_the_caller_check(tmp_path):
    path = tmp_path / "old.safetensors"
    metadata = {"model": "nir-gnn", "config": {"k": 8}}
    write_weights_file(path, _state(), metadata)
    edit_header(path, lambda entries: entries.pop("metadata_sha256"))
    seen = []
    assert read_weights_file(path, seen.append)[0] == metadata
    assert seen == [metadata]
    assert read_weights_file(path)[0] == metadata  # no check given: taken as it is
    hashed = tmp_path / "new.safetensors"
    write_weights_file(hashed, _state(), metadata)
    read_weights_file(hashed, seen.append)
    assert len(seen) == 1  # a hashed header needs no other check
