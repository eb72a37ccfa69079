"""Editing the header of a safetensors file in place, as a hand with a hex editor would:
the tensors' bytes and the stored hashes stay as they are."""

import json
import struct
from collections.abc import Callable
from pathlib import Path


def edit_header(path: Path, edit: Callable[[dict[str, str]], None]) -> None:
    """Applies ``edit`` to the ``__metadata__`` entries (strings) of the file's header."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    edit(header["__metadata__"])
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])
