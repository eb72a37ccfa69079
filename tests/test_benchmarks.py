"""Smoke tests of the benchmarks (``python -m benchmarks.run``) on tiny sizes: the files are
written with the expected keys and positive numbers. No timing assertions."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a folder of the checkout, not installed
    sys.path.insert(0, str(REPO_ROOT))

torch = pytest.importorskip("torch")
run = pytest.importorskip("benchmarks.run")
from benchmarks import full_image, graph_builders, iteration, operators, task  # noqa: E402
from benchmarks.common import memory_cap_reason  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # A smoke test on a shared 2-core machine: one thread avoids oversubscription stalls.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def _tiny_configs(data_root: Path) -> dict[str, object]:
    return {
        "operators": operators.Config.quick(
            features=9,
            num_patches=1,
            patch_size=16,
            curve_patches=(1,),
            curve_k=(8,),
            curve_features=(9,),
            min_run_time=0.01,
            device="cpu",
        ),
        "graph": graph_builders.Config.quick(
            sizes=(("1x16x16", 1, 16, 16), ("2x20x20", 2, 20, 20)),
            features=(3,),
            windows=(None, 9),
            min_run_time=0.01,
            device="cpu",
        ),
        "iteration": iteration.Config.quick(
            widths=((6, 2),), layers_per_block=1, k=4, batch_size=1, patch_size=12, device="cpu"
        ),
        "full_image": full_image.Config.quick(
            synthetic_sizes=(24,),
            weights="random",
            fallback_features=6,
            fallback_rank=2,
            fallback_layers_per_block=1,
            device="cpu",
        ),
        "task": task.Config.quick(
            features=6,
            rank=2,
            k=4,
            layers_per_block=1,
            iterations=2,
            batch_size=2,
            patch_size=16,
            val_images=1,
            val_search_window=9,
            data=data_root / "vcip2020",
            device="cpu",
        ),
    }


def _write_synthetic_dataset(root: Path) -> None:
    """Plain layout: train/{nir,rgb}/<name>.png and validation/{nir,rgb}/<name>.png."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("validation", 1)):
        for i in range(count):
            for kind, shape in (("nir", (24, 24)), ("rgb", (24, 24, 3))):
                folder = root / split / kind
                folder.mkdir(parents=True, exist_ok=True)
                image = rng.integers(0, 256, size=shape, dtype=np.uint8)
                iio.imwrite(folder / f"img{i}.png", image)


def test_quick_run_writes_results(tmp_path: Path) -> None:
    _write_synthetic_dataset(tmp_path / "data" / "vcip2020")
    configs = _tiny_configs(tmp_path / "data")
    out = tmp_path / "out"
    torch.manual_seed(0)
    results = run.run_benchmarks(list(configs), configs, out, quick=True, device="cpu")

    data = json.loads((out / "results.json").read_text())  # strict JSON
    assert data["benchmarks"].keys() == set(configs)
    meta = data["metadata"]
    for key in ("torch", "torch_geometric", "pyg_lecc", "python", "platform", "cpu_model"):
        assert meta[key], key
    for key in ("device", "torch_num_threads", "git_commit", "date", "mode"):
        assert key in meta
    assert meta["mode"] == "quick"
    assert meta["torch_num_threads"] >= 1
    assert results["metadata"]["date"] == meta["date"]

    # Operators: every operator measured on both graphs, ratios against lecc_node.
    ops = data["benchmarks"]["operators"]
    assert {e["operator"] for e in ops["base"]} == set(operators.OPERATORS)
    assert {e["graph"] for e in ops["base"]} == set(operators.GRAPHS)
    for entry in ops["base"]:
        assert entry["params"] > 0
        for mode in operators.MODES:
            m = entry[mode]
            assert m["status"] == "ok", m
            assert _positive(m["time_s"]) and m["peak_mb"] >= 0
            assert _positive(m["time_ratio"])
        if entry["operator"] == operators.REFERENCE:
            assert entry["forward"]["time_ratio"] == pytest.approx(1.0)
    assert all(ops["curves"][c] for c in ("nodes", "k", "features"))

    # Graph builders: torch measured with and without a window; torch_cluster has no window.
    graph = data["benchmarks"]["graph"]["entries"]
    measured = [e for e in graph if e.get("status") == "ok"]
    assert any(e["backend"] == "torch" and e["search_window"] == 9 for e in measured)
    assert all(_positive(e["time_s"]) and e["peak_mb"] > 0 for e in measured)
    assert all(
        e["status"] == "n/a"
        for e in graph
        if e["backend"] == "torch_cluster" and e["search_window"]
    )

    # Training iteration: NIR-GNN with kernel and reference, timed against the CNN.
    its = {e["variant"]: e for e in data["benchmarks"]["iteration"]["entries"]}
    assert set(its) == set(iteration.VARIANTS)
    assert all(e["status"] == "ok" and _positive(e["time_s"]) for e in its.values())
    assert its["reference"]["backend"] == "reference"
    assert its["kernel"]["backend"] == "numba"
    assert its["cnn"]["cnn_ratio"] == pytest.approx(1.0)
    assert its["kernel"]["params"] > its["cnn"]["params"]

    # Full image: both models, with the model's origin stated.
    full = data["benchmarks"]["full_image"]
    assert set(full["models"]) == {"nir-gnn", "cnn"}
    assert all("random init" in m["source"] for m in full["models"].values())
    assert all(_positive(e["time_s"]) and e["peak_mb"] > 0 for e in full["entries"])

    # Task: every variant trained and validated, parameter counts reported.
    tk = data["benchmarks"]["task"]
    assert tk["status"] == "ok"
    assert set(tk["variants"]) == set(task.VARIANTS)
    for entry in tk["variants"].values():
        assert entry["status"] == "ok", entry
        assert entry["params"] > 0 and _positive(entry["iteration"]["time_s"])
        assert set(entry["val"]) >= {"psnr", "ssim", "ae_deg", "ae_img_rad"}
    assert "NOT the paper's" in tk["schedule"]

    md = (out / "results.md").read_text()
    headings = ("## Operators", "## Image graph builders", "## Training iteration", "## Full-image")
    for heading in (*headings, "## Task"):
        assert heading in md
    assert "How memory is measured" in md
    plots = ("operators_scaling.png", "graph_builders.png", "iteration.png", "full_image.png")
    for name in (*plots, "task.png"):
        assert (out / name).stat().st_size > 0, name


def test_task_skipped_without_data(tmp_path: Path) -> None:
    cfg = task.Config.quick(data=tmp_path / "missing", device="cpu")
    result = task.run(cfg, tmp_path)
    assert result["status"] == "skipped" and "not found" in result["reason"]
    assert "Skipped" in task.markdown(result)


def test_memory_cap_skips_nnconv() -> None:
    # The paper's batch: NNConv at F=99 needs E*F*F floats (5.5 GB) for its weights alone.
    E, F = 141_120, 99
    forward = operators.predicted_bytes("nnconv", E, F, 11, backward=False)
    assert forward >= E * F * F * 4
    reason = memory_cap_reason(operators.predicted_bytes("nnconv", E, F, 11, backward=True), 8.0)
    assert reason is not None and reason.startswith("OOM (predicted")


def test_cli_arguments(tmp_path: Path) -> None:
    args = run.parse_args(["--quick", "--only", "graph,operators", "--out", str(tmp_path)])
    assert args.only == ["operators", "graph"] and args.quick and args.out == tmp_path
    configs = run.build_configs(args)
    assert configs["operators"].features == 33 and configs["operators"].max_gb == 8.0
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "nope"])


def test_timing_and_memory_helpers() -> None:
    import time

    from benchmarks.common import measure_peak_memory, time_function

    # Slow calls are timed one by one, fast ones with blocked_autorange.
    slow = time_function(lambda: time.sleep(0.02), long_call_s=0.01, min_run_time=0.01)
    assert slow["measurements"] == 3 and slow["method"].startswith("time.perf_counter")
    assert slow["time_s"] >= 0.015
    fast = time_function(lambda: torch.ones(10).sum(), min_run_time=0.01)
    assert "blocked_autorange" in fast["method"] and _positive(fast["time_s"])

    # An 8 MB temporary and a 4 MB one alive at the same time: peak 12 MB.
    def allocate() -> None:
        a = torch.ones(2_000_000)
        b = torch.ones(1_000_000)
        del a, b

    memory = measure_peak_memory(allocate, torch.device("cpu"))
    assert memory["peak_mb"] == pytest.approx(12.0, rel=0.05)


def _tiny_molecule_split(split: str, seed: int = 0, limit: int | None = None):
    pytest.importorskip("rdkit")
    from pyg_lecc.chem.molecules import smiles_to_graph

    smiles = ["CCO", "CCN", "c1ccccc1", "CC(=O)O", "C1CCCCC1", "CCCl", "OCCO", "CC#N"]
    graphs = [smiles_to_graph(s, y=float(i)) for i, s in enumerate(smiles)]
    return graphs[:4], graphs[4:6], graphs[6:]


def test_molecules_benchmark_writes_tables(tmp_path, monkeypatch) -> None:
    from benchmarks import molecules

    monkeypatch.setattr(molecules, "load_split", _tiny_molecule_split)
    cfg = molecules.Config.quick(splits=("freesolv-random",), hidden_channels=8, batch_size=2)
    result = molecules.run(cfg, tmp_path)
    layers = result["splits"]["freesolv-random"]["layers"]
    assert set(layers) == {"nnconv", "lecc", "gine"}
    for layer, entry in layers.items():
        assert _positive(entry["test_rmse_mean"]) and _positive(entry["epoch_time_s"])
        assert len(entry["curves"]["val_rmse"][0]) == cfg.epochs
        assert result["cost"][layer]["params"] > 0 and _positive(result["cost"][layer]["peak_mb"])
    assert result["cost"]["nnconv"]["params"] > result["cost"]["lecc"]["params"]
    table = molecules.markdown(result)
    assert "### freesolv-random" in table and "| lecc |" in table


def test_chemprop_baseline_runs_the_cli_on_our_splits(tmp_path) -> None:
    # A stand-in for the chemprop executable: it checks the arguments it is given and
    # predicts the training mean, so the RMSE can be computed here independently.
    from benchmarks import chemprop_baseline

    fake = tmp_path / "chemprop"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import csv, pathlib, statistics, sys\n"
        "args = sys.argv[1:]\n"
        "assert args[0] == 'train', args\n"
        "paths = args[args.index('--data-path') + 1 : args.index('--data-path') + 4]\n"
        "out = pathlib.Path(args[args.index('--output-dir') + 1]) / 'model_0'\n"
        "out.mkdir(parents=True)\n"
        "train = [float(r['y']) for r in csv.DictReader(open(paths[0]))]\n"
        "test = list(csv.DictReader(open(paths[2])))\n"
        "with open(out / 'test_predictions.csv', 'w') as f:\n"
        "    f.write('smiles,y\\n')\n"
        "    for row in test: f.write(f\"{row['smiles']},{statistics.fmean(train)}\\n\")\n"
    )
    fake.chmod(0o755)
    train, val, test = _tiny_molecule_split("freesolv-random")
    csvs = chemprop_baseline.write_split_csvs((train, val, test), tmp_path)
    rmse = chemprop_baseline.run_chemprop(str(fake), csvs, tmp_path / "out", epochs=3, seed=0)
    mean = sum(float(g.y) for g in train) / len(train)
    expected = math.sqrt(sum((mean - float(g.y)) ** 2 for g in test) / len(test))
    assert rmse == pytest.approx(expected)
    predictions = tmp_path / "out" / "model_0" / "test_predictions.csv"
    predictions.write_text("smiles,y\nCCO,1\nCCN,2\n")
    with pytest.raises(ValueError, match="does not list the molecules"):
        chemprop_baseline.rmse_from_predictions(csvs[2], predictions)


def test_molecules_cost_only_keeps_the_accuracy_results(tmp_path, monkeypatch) -> None:
    from benchmarks import molecules

    monkeypatch.setattr(molecules, "load_split", _tiny_molecule_split)
    with pytest.raises(SystemExit, match="does not exist"):
        molecules.main(["--quick", "--cost-only", "--out", str(tmp_path)])
    molecules.main(["--quick", "--splits", "freesolv-random", "--out", str(tmp_path)])
    before = json.loads((tmp_path / "molecules.json").read_text())
    molecules.main(["--quick", "--cost-only", "--out", str(tmp_path)])
    after = json.loads((tmp_path / "molecules.json").read_text())
    assert after["molecules"]["splits"] == before["molecules"]["splits"]
    assert "cost_run" in after["metadata"] and "cost_run" not in before["metadata"]
    assert all(_positive(c["epoch_time_s"]) for c in after["molecules"]["cost"].values())
    assert "re-measured" in (tmp_path / "molecules.md").read_text()


def test_profile_attributes_every_op_to_a_phase(tmp_path: Path) -> None:
    from benchmarks import profile

    cfg = profile.Config.quick(features=6, rank=2, k=4, layers_per_block=1, patch_size=12)
    result = profile.run(cfg, tmp_path)
    ops = result["ops_ms"]
    for phase in profile.PHASES:  # the phase totals are the sums of their ops
        assert result["phases_ms"][phase] == pytest.approx(sum(ops[phase].values()))
    parts = result["forward_parts_ms"]
    assert set(parts) == {"knn_graph", "lightweight_ecc", "rest"}
    assert sum(parts.values()) == pytest.approx(result["phases_ms"]["forward"])
    assert all(_positive(ms) for ms in parts.values())
    assert "pyg_lecc::edge_aggregate_backward" in ops["backward"]
    assert "pyg_lecc::edge_aggregate_backward" not in ops["forward"]
    assert set(result["iteration_by_backward"]) == set(profile.BACKWARDS)
    for timed in result["iteration_by_backward"].values():  # one timed iteration each
        wall = timed["wall_s"]
        assert sum(wall[p] for p in profile.PHASES) == pytest.approx(timed["time_s"])
        assert 0 < wall["knn_graph"] < wall["forward"]
    assert "| `one_pass` |" in profile.markdown(result)
    assert "| forward: graph builds (all threads) |" in profile.markdown(result)


def test_commits_side_by_side(tmp_path):
    from benchmarks import commits

    # The work tree's src, a tiny model on noise: per-iteration times, the ratio to the first
    # revision and its markdown row; then the refused settings and the source extraction.
    cfg = commits.Config(
        (commits.WORK_TREE,),
        rounds=2,
        iterations=1,
        nir_dir=None,
        batch=2,
        patch=16,
        features=6,
        rank=2,
        layers_per_block=1,
    )
    results = commits.run(cfg)
    entry = results[commits.WORK_TREE]
    assert len(entry["times_s"]) == 2 and all(_positive(t) for t in entry["times_s"])
    assert entry["ratio"] == 1.0
    text = commits.render_markdown(cfg, results, {"git_commit": "abc", "date": "today"})
    assert "| `.` |" in text and "patches of noise" in text

    with pytest.raises(ValueError, match="'iterations' must be at least 1, got 0"):
        commits.run(dataclasses.replace(cfg, iterations=0))
    with pytest.raises(ValueError, match="more than once: HEAD"):
        commits.run(dataclasses.replace(cfg, revisions=("HEAD", "HEAD")))
    with pytest.raises(ValueError, match="'no-such-revision'"):
        commits._extract_src("no-such-revision", tmp_path / "bad")
    src = commits._extract_src("HEAD", tmp_path / "head")
    assert (src / "pyg_lecc" / "__init__.py").is_file()
