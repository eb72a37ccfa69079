"""The file format of model weights: safetensors, with the model's description in its header.

A weights file holds tensors and plain metadata only, so reading one never runs code.
:func:`write_weights_file` writes `safetensors <https://huggingface.co/docs/safetensors>`_
(no pickle, memory-mappable, the norm for published weights) with three header entries:
``pyg_lecc`` (a JSON object: model name, architecture config, training metadata), and
``sha256``, a hash of the tensors' names, dtypes, shapes and bytes that
:func:`read_weights_file` checks, so a flipped bit in a tensor is refused rather than loaded
(safetensors itself checks the header, not the data). :func:`read_weights_file` also reads
the earlier format, a ``torch.save`` zip archive (``.pt``) read with ``weights_only=True``
after checking its CRC-32 checksums.

What the metadata must contain (a registered model, a valid config) is checked by
:mod:`pyg_lecc.models`; this module checks that the file is intact and holds tensors.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from pyg_lecc._atomic import write_atomically

__all__ = [
    "check_archive_checksums",
    "read_weights_file",
    "tensors_sha256",
    "write_weights_file",
]

_METADATA_KEY = "pyg_lecc"
_HASH_KEY = "sha256"


def tensors_sha256(state: dict[str, Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_weights_file(
    path: str | Path, state: dict[str, Tensor], metadata: dict[str, Any]
) -> None:
    """Writes ``state`` and ``metadata`` (JSON-serialisable) as a safetensors file, atomically
    and durably (:func:`pyg_lecc._atomic.write_atomically`: readers, or a crash, see the old
    file or the complete new one; an existing file is replaced).

    Args:
        path: Destination (any suffix; ``.safetensors`` is the convention).
        state: Names to tensors (copied to contiguous CPU tensors).
        metadata: Stored as JSON in the header.
    """
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}
    header = {_METADATA_KEY: json.dumps(metadata), _HASH_KEY: tensors_sha256(tensors)}
    data = safetensors.torch.save(tensors, metadata=header)
    write_atomically(Path(path), lambda tmp: tmp.write_bytes(data))


def read_weights_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Reads a weights file: safetensors (:func:`write_weights_file`) or an earlier
    ``torch.save`` archive, told apart by their contents.

    Returns:
        The metadata and the state dict (CPU tensors).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is a directory, or not an intact weights file: truncated, a
            checksum or hash that does not match the tensors, objects other than tensors and
            plain values, or another format. The message names the file and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"the weights file {path} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if zipfile.is_zipfile(path):
        return _read_torch_archive(path)
    return _read_safetensors(path)


def _damaged(path: Path, err: BaseException) -> ValueError:
    detail = " ".join(str(err).split()) or type(err).__name__
    return ValueError(f"cannot load weights from {path}: the file is damaged ({detail})")


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    try:
        # Memory-mapped: each tensor is read once, straight into its own storage.
        with safetensors.safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as err:  # SafetensorError and OS errors of truncated or foreign files
        raise ValueError(
            f"cannot load weights from {path}: not a safetensors file or a PyTorch weights "
            f"archive (the file is truncated, damaged or of another format)"
        ) from err
    if _METADATA_KEY not in header or _HASH_KEY not in header:
        raise ValueError(
            f"{path} is not a pyg_lecc weights file (its header lacks {_METADATA_KEY!r} and "
            f"{_HASH_KEY!r})"
        )
    if tensors_sha256(state) != header[_HASH_KEY]:
        raise ValueError(
            f"cannot load weights from {path}: the file is damaged (its tensors do not match "
            "the hash stored in its header)"
        )
    try:
        metadata = json.loads(header[_METADATA_KEY])
    except json.JSONDecodeError as err:
        raise _damaged(path, err) from err
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} is damaged: its {_METADATA_KEY!r} metadata is not an object")
    return metadata, state


def _read_torch_archive(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    check_archive_checksums(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, i.e. running the file's code: not shown.
        raise ValueError(
            f"cannot load weights from {path}: it is damaged or holds objects other than "
            "tensors and plain values, which are never loaded (that could run code)"
        ) from err
    except Exception as err:  # damaged zip members, read errors
        raise _damaged(path, err) from err
    if not isinstance(blob, dict) or not {"model", "config", "state_dict"} <= blob.keys():
        raise ValueError(
            f"{path} is not a pyg_lecc weights file (expected keys 'model', 'config', 'state_dict')"
        )
    state = blob["state_dict"]
    return {"model": blob["model"], "config": blob["config"]}, state


def check_archive_checksums(path: Path) -> None:
    """Checks the CRC-32 checksum of every member of a ``torch.save`` zip archive, which
    :func:`torch.load` does not: a flipped bit in a tensor's bytes would load as a silently
    different value.

    Raises:
        ValueError: A member does not match its checksum, or the archive is unreadable.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as err:
        raise _damaged(path, err) from err
    if damaged is not None:
        raise ValueError(
            f"cannot load weights from {path}: the file is damaged (checksum of member "
            f"{damaged!r} does not match its contents)"
        )
