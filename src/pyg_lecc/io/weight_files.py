"""The file format of model weights: safetensors, with the model's description in its header.

A weights file holds tensors and plain metadata only, so reading one never runs code.
:func:`write_weights_file` writes `safetensors <https://huggingface.co/docs/safetensors>`_
(no pickle, memory-mappable, the norm for published weights) with three header entries:

* ``pyg_lecc``: a JSON object (model name, architecture config, training metadata);
* ``sha256``: a hash of the tensors' names, dtypes, shapes and bytes, so that a flipped bit
  in a tensor is refused rather than loaded (safetensors itself checks the header, not the
  data);
* ``metadata_sha256``: a hash of ``sha256`` and the exact text of ``pyg_lecc``, so that an
  edited header (``"k": 8`` changed to 9, which shapes no tensor) is refused too, and a
  header cannot be moved onto other tensors.

Like any checksum these catch damage and edits, not a forger who recomputes them.
:func:`read_weights_file` checks both hashes. Files written before ``metadata_sha256``
existed (the shipped weights among them) are still read; their caller can cross-check such
an unhashed header through ``check_unhashed`` (:func:`pyg_lecc.nir.models.load_weights`
compares it with the copies of the config the file and its model card hold).

:func:`read_weights_file` also reads the earlier format, a ``torch.save`` zip archive
(``.pt``) read with ``weights_only=True`` after checking its CRC-32 checksums (which cover
the config stored in it as well). The format is told from the content, not the name.

What the metadata must contain (a registered model, a valid config) is checked by
:mod:`pyg_lecc.nir.models`; this module checks that the file is intact and holds tensors.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import Tensor

from pyg_lecc.io.atomic import write_atomically

__all__ = [
    "check_archive_checksums",
    "read_weights_file",
    "tensors_sha256",
    "write_weights_file",
]

_METADATA_KEY = "pyg_lecc"
_HASH_KEY = "sha256"
_HEADER_HASH_KEY = "metadata_sha256"


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
    and durably (:func:`pyg_lecc.io.atomic.write_atomically`: readers, or a crash, see the old
    file or the complete new one; an existing file is replaced).

    Args:
        path: Destination (any suffix; ``.safetensors`` is the convention).
        state: Names to tensors (copied to contiguous CPU tensors).
        metadata: Stored as JSON in the header.
    """
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in state.items()}
    text, digest = json.dumps(metadata), tensors_sha256(tensors)
    header = {
        _METADATA_KEY: text,
        _HASH_KEY: digest,
        _HEADER_HASH_KEY: _header_sha256(digest, text),
    }
    data = safetensors.torch.save(tensors, metadata=header)
    write_atomically(Path(path), lambda tmp: tmp.write_bytes(data))


def _header_sha256(tensors_digest: str, metadata_text: str) -> str:
    return hashlib.sha256(f"{tensors_digest}\0{metadata_text}".encode()).hexdigest()


def read_weights_file(
    path: str | Path, check_unhashed: Callable[[dict[str, Any]], None] | None = None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Reads a weights file: safetensors (:func:`write_weights_file`) or an earlier
    ``torch.save`` archive, told apart by their contents.

    Args:
        path: The file.
        check_unhashed: Called with the metadata of a safetensors file written before its
            header was hashed (no ``metadata_sha256``), to compare it with what else is
            known; it raises to refuse the file. (default: :obj:`None`: such a header is
            taken as it is)

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
    return _read_safetensors(path, check_unhashed)


def _damaged(path: Path, err: BaseException) -> ValueError:
    detail = " ".join(str(err).split()) or type(err).__name__
    return ValueError(f"cannot load weights from {path}: the file is damaged ({detail})")


def _read_safetensors(
    path: Path, check_unhashed: Callable[[dict[str, Any]], None] | None
) -> tuple[dict[str, Any], dict[str, Tensor]]:
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
    hashed = _HEADER_HASH_KEY in header
    expected = _header_sha256(header[_HASH_KEY], header[_METADATA_KEY])
    if hashed and header[_HEADER_HASH_KEY] != expected:
        raise ValueError(
            f"cannot load weights from {path}: its header was edited or damaged (its "
            f"{_METADATA_KEY!r} metadata does not match the hash stored with it)"
        )
    try:
        metadata = json.loads(header[_METADATA_KEY])
    except json.JSONDecodeError as err:
        raise _damaged(path, err) from err
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} is damaged: its {_METADATA_KEY!r} metadata is not an object")
    if not hashed and check_unhashed is not None:
        check_unhashed(metadata)
    return metadata, state


def _read_torch_archive(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    check_archive_checksums(path)
    try:
        # An open file, not the path: torch.load reads a path ending in ".safetensors" as
        # safetensors whatever its content, and this content is a zip archive.
        with path.open("rb") as file:
            blob = torch.load(file, map_location="cpu", weights_only=True)
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
