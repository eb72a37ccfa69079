r"""The architecture of NIR-GNN and its CNN baseline: :class:`NIRGNNConfig`, the one place
where an architecture value is declared, with its type, default, check and help text.

It is what :class:`~pyg_lecc.nir.models.NIRGNN` is built from, what a weights file stores in
its header (:func:`~pyg_lecc.nir.hub.save_weights`), what a training run holds as
:attr:`TrainConfig.arch <pyg_lecc.nir.training.TrainConfig>`, and where the architecture
options of ``pyg-lecc train`` come from (:func:`option_fields`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["NIRGNNConfig", "option_fields"]

# A check returns what a value must be, or None when it is valid.
_Check = Callable[[Any], "str | None"]


def _integer(low: int, step: int = 1) -> _Check:
    def check(value: Any) -> str | None:
        valid = isinstance(value, int) and not isinstance(value, bool)
        if valid and value >= low and value % step == 0:
            return None
        if step > 1:
            return f"a positive multiple of {step}"
        return f"an integer of at least {low}"

    return check


def _positive_number(value: Any) -> str | None:
    valid = isinstance(value, int | float) and not isinstance(value, bool)
    return None if valid and math.isfinite(value) and value > 0 else "a positive finite number"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "True or False"


def _arch(default: Any, check: _Check, help: str, option: bool = True) -> Any:
    # option=False: not an option of `pyg-lecc train` (see option_fields).
    return field(default=default, metadata={"check": check, "help": help, "option": option})


@dataclass(frozen=True)
class NIRGNNConfig:
    r"""The architecture of a :class:`~pyg_lecc.nir.models.NIRGNN` (paper defaults).

    Each field's metadata holds its ``check`` (validation), its ``help`` text and whether it
    is an ``option`` of ``pyg-lecc train``. Stored in a weights file's header as
    :meth:`to_dict` and read back by :meth:`from_dict`.

    Args:
        features (int, optional): Width :math:`F` (a multiple of 3). (default: :obj:`99`)
        rank (int, optional): Rank :math:`r` of :class:`~pyg_lecc.LightweightECC`.
            (default: :obj:`11`)
        delta (float, optional): Edge-attention decay :math:`\delta`. (default: :obj:`10.0`)
        k (int, optional): Non-local neighbours per pixel. (default: :obj:`8`)
        non_local (bool, optional): :obj:`False` builds the CNN baseline (no non-local
            path). (default: :obj:`True`)
        layers_per_block (int, optional): Graph layers per HPF/LPF block.
            (default: :obj:`3`)

    Raises:
        ValueError: A value of the wrong type or out of range; the message names the field.

    Example:
        >>> from pyg_lecc.nir.config import NIRGNNConfig
        >>> NIRGNNConfig(features=12, rank=2).to_dict()
        {'features': 12, 'rank': 2, 'delta': 10.0, 'k': 8, 'non_local': True, 'layers_per_block': 3}
        >>> NIRGNNConfig(features=10)
        Traceback (most recent call last):
        ...
        ValueError: NIRGNNConfig: features must be a positive multiple of 3, got 10
    """

    features: int = _arch(99, _integer(3, step=3), "width F, a multiple of 3")
    rank: int = _arch(11, _integer(1), "rank of the lightweight ECC")
    # The paper's constant: trained runs never changed it.
    delta: float = _arch(10.0, _positive_number, "edge-attention decay", option=False)
    k: int = _arch(8, _integer(1), "non-local neighbours per pixel")
    # Chosen by the model's name (`--model`): nir-gnn or its CNN baseline.
    non_local: bool = _arch(True, _boolean, "whether graph layers have their non-local path", False)
    layers_per_block: int = _arch(3, _integer(1), "graph layers per HPF/LPF block")

    def __post_init__(self) -> None:
        for f in fields(self):
            problem = _problem(f, getattr(self, f.name))
            if problem:
                raise ValueError(f"NIRGNNConfig: {f.name} {problem}")
        # One spelling of the decay in headers and comparisons: 10 and 10.0 are the same.
        object.__setattr__(self, "delta", float(self.delta))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, in declaration order (a weights file's ``config``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: object, source: str | Path) -> NIRGNNConfig:
        """The architecture a weights file's header stores.

        Args:
            config: The header's ``config``: a dict with exactly the fields of this class
                (``k`` and ``delta`` shape no tensor, so a missing one would silently load a
                wrong model).
            source: The file, named in errors.

        Raises:
            ValueError: ``config`` is not a dict, lacks a field or has an unknown one, or
                holds a value of the wrong type or out of range. The message names
                ``source``.

        Example:
            >>> NIRGNNConfig.from_dict({**NIRGNNConfig().to_dict(), "rank": 4}, "w").rank
            4
        """
        if not isinstance(config, Mapping):
            kind = type(config).__name__
            raise ValueError(f"{source} is damaged: 'config' is not a dict, got {kind}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(map(str, config.keys() - set(names)))
        missing = sorted(set(names) - config.keys())
        if unknown or missing:
            problem = f"unknown config key(s) {unknown}" if unknown else f"config lacks {missing}"
            raise ValueError(
                f"{source} is damaged: {problem} (a weights config has exactly {sorted(names)})"
            )
        for f in fields(cls):
            if _problem(f, config[f.name]):
                raise ValueError(
                    f"{source} is damaged: invalid config value {f.name}={config[f.name]!r} "
                    f"({_problem(f, config[f.name])})"
                )
        return cls(**config)


def _problem(f: dataclasses.Field, value: Any) -> str | None:
    must = f.metadata["check"](value)
    return None if must is None else f"must be {must}, got {value!r}"


def option_fields() -> list[dataclasses.Field]:
    """The fields of :class:`NIRGNNConfig` that are options of ``pyg-lecc train``
    (``--layers-per-block`` for ``layers_per_block``), in declaration order.

    Example:
        >>> from pyg_lecc.nir.config import option_fields
        >>> [f.name for f in option_fields()]
        ['features', 'rank', 'k', 'layers_per_block']
    """
    return [f for f in fields(NIRGNNConfig) if f.metadata["option"]]
