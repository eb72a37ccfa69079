"""Damaging weights and checkpoint archives the way a bad disk or transfer would."""

import io
import struct
import zipfile


def flip_a_tensor_byte(data: bytes) -> bytes:
    # One bit of the largest tensor's stored bytes: the archive stays a valid zip, and
    # without its CRC check the tensor would load with a changed value.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        tensors = [i for i in archive.infolist() if "/data/" in i.filename]
        info = max(tensors, key=lambda i: i.file_size)
    header = info.header_offset
    name_len, extra_len = struct.unpack("<HH", data[header + 26 : header + 30])
    position = header + 30 + name_len + extra_len + info.file_size // 2
    return data[:position] + bytes([data[position] ^ 0x10]) + data[position + 1 :]
