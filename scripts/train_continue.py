"""Continue the training of NIR-GNN until a stop time, then finish it (see
:mod:`pyg_lecc.nir.continuation` and docs/nir_colorization.rst, "Continuing training").

Usage, from anywhere (defaults refer to this repository)::

    python scripts/train_continue.py start --data ../shared/data/vcip2020 \\
        --out ../runs/f24-0612 --until 18:30 --threads 1
    python scripts/train_continue.py finish ../runs/f24-0612
"""

from pathlib import Path

from pyg_lecc.nir.continuation import main

if __name__ == "__main__":
    raise SystemExit(main(root=Path(__file__).resolve().parents[1]))
