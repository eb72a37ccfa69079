"""Tests of pyg_lecc.nir.continuation (start and finish) on a tiny configuration (CPU only)."""

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch
from training_helpers import TINY, TINY_ARCH, _log, _make_data

from pyg_lecc.nir import continuation
from pyg_lecc.nir.continuation import LEDGER_HEADING, Recipe, append_ledger_row, finish, start
from pyg_lecc.nir.hub import (
    default_weights_path,
    load_weights,
    model_from_weights,
    save_weights,
)
from pyg_lecc.nir.training import TrainConfig, train

RECIPE = dict(lr=1e-2, lr_end=1e-3, warmup=1, ema=0.9, bn_batches=2, val_every=3, ckpt_every=3)
RECIPE.update(batch_size=TINY["batch_size"], patch=TINY["patch"], iters=6)
NOW = datetime(2026, 6, 12, 17, 0).astimezone()

pytestmark = pytest.mark.usefixtures("one_thread")


def _shipped(root: Path, data: Path) -> Path:
    """A weights folder like the package's: tiny NIR-GNN weights trained a little, their
    metadata, training log and a model card with a ledger."""
    first = root / "first"
    train(
        TrainConfig(
            data=data, out=first, iters=8, lr=1e-2, progress=False, arch=TINY_ARCH, patch=12
        )
    )
    folder = root / "weights"
    folder.mkdir()
    shutil.copy(first / "weights.safetensors", folder / "nir-gnn.safetensors")
    meta = {"model": "nir-gnn", "iterations": 8, "training_time_s": 3.0, "data": "synthetic"}
    (folder / "nir-gnn.json").write_text(json.dumps(meta))
    shutil.copy(first / "log.jsonl", folder / "nir-gnn.log.jsonl")
    (folder / "MODEL_CARD.md").write_text("# Card\n\nText.\n")
    return folder


def _data_and_recipe(root: Path) -> tuple[Path, Recipe]:
    """A tiny data set and a recipe that holds out one of its pairs (the default held-out
    pairs are VCIP names)."""
    (root / "holdout.txt").write_text("img1\n")
    return _make_data(root / "data"), Recipe(holdout_pairs=str(root / "holdout.txt"))


@pytest.fixture(scope="module")
def started(tmp_path_factory):
    """A finished tiny continuation of the shipped weights (weights folder, run)."""
    root = tmp_path_factory.mktemp("continuation")
    data, recipe = _data_and_recipe(root)
    weights = _shipped(root, data)
    recipe = dataclasses.replace(recipe, **RECIPE)
    run = root / "runs" / "c1"
    code = start(
        data,
        run,
        NOW + timedelta(hours=1),
        1,
        weights=weights / "nir-gnn.safetensors",
        margin_s=600,
        recipe=recipe,
        replace_process=False,
        now=NOW,
    )
    assert code == 0, (run / "train.out").read_text()
    return weights, run


@pytest.fixture
def copies(started, tmp_path):
    """Copies of the weights folder and the run, so each test finishes its own."""
    weights, run = started
    shutil.copytree(weights, tmp_path / "weights")
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "weights", tmp_path / "run"


# --------------------------------------------------------------------------------------------
# start
# --------------------------------------------------------------------------------------------


def test_start_continues_the_weights_until_the_stop_time(started):
    weights, run = started
    record = json.loads((run / "continue.json").read_text())
    assert record["iterations_before"] == 8 and record["threads"] == 1
    assert record["time_budget_s"] == pytest.approx(3000.0)  # one hour less the margin
    # The trainer reads its settings from the run folder, where the record names them.
    assert record["command"] == f"pyg-lecc train --config {run / 'train.json'}"
    settings = json.loads((run / "train.json").read_text())
    assert "train_config" not in record  # one copy of the settings: train.json
    assert settings["init_from"] == str(weights / "nir-gnn.safetensors")
    assert settings["time_budget"] == 3000 and settings["threads"] == 1
    assert settings["seed"] == 8  # new patches for each continuation
    assert settings["ema_bias_correction"] is True and settings["progress"] is False
    assert settings["arch"] == load_weights(weights / "nir-gnn.safetensors")[0]["config"]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 6 and ckpt["config"]["ema_bias_correction"] is True
    assert ckpt["config"]["init_from"] == str(weights / "nir-gnn.safetensors")
    assert [e["iteration"] for e in _log(run / "log.jsonl") if e["kind"] == "select"] == [3, 6]
    # The validation images are left to finish; the selection rule is declared up front.
    assert settings["val_split"] == "none"
    assert not [e for e in _log(run / "log.jsonl") if e["kind"] == "val"]
    assert record["selection"] == continuation.SELECTION_RULE


def test_start_runs_the_trainer_with_its_threads(tmp_path, monkeypatch):
    weights = tmp_path / "w.pt"
    save_weights(model_from_weights(default_weights_path("nir-gnn"))[0], "nir-gnn", weights)
    seen = {}

    def run(argv, env, **kwargs):
        seen.update(argv=argv, env=env)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(continuation.subprocess, "run", run)
    until = NOW + timedelta(minutes=30)
    data, recipe = _data_and_recipe(tmp_path)
    code = start(
        data,
        tmp_path / "run",
        until,
        3,
        weights=weights,
        recipe=recipe,
        margin_s=60,
        iterations_before=40,
        replace_process=False,
        now=NOW,
    )
    assert code == 0
    assert seen["env"]["NUMBA_NUM_THREADS"] == seen["env"]["OMP_NUM_THREADS"] == "3"
    argv = seen["argv"]
    assert argv[1:5] == ["-m", "pyg_lecc.nir.cli", "train", "--config"]
    settings = json.loads(Path(argv[5]).read_text())
    assert settings["time_budget"] == 1740 and settings["threads"] == 3
    assert settings["arch"]["features"] == 24  # the architecture of the weights


def test_start_refuses_git_trees_late_stop_times_and_used_folders(tmp_path):
    weights = default_weights_path("nir-gnn")
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    inside = tmp_path / "repo" / "runs" / "a"
    args = dict(weights=weights, replace_process=False, now=NOW)
    with pytest.raises(ValueError, match="inside the git work tree"):
        start(tmp_path, inside, NOW + timedelta(hours=1), 1, **args)
    with pytest.raises(ValueError, match=r"leaves .* of training"):
        start(tmp_path, tmp_path / "b", NOW + timedelta(minutes=5), 1, margin_s=300, **args)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "log.jsonl").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        start(tmp_path, tmp_path / "c", NOW + timedelta(hours=1), 1, **args)
    with pytest.raises(ValueError, match="iterations-before"):
        # Weights with no .json next to them and no training metadata in their header.
        bare = tmp_path / "bare.safetensors"
        save_weights(model_from_weights(weights)[0], "nir-gnn", bare)
        start(tmp_path, tmp_path / "d", NOW + timedelta(hours=1), 1, **{**args, "weights": bare})
    assert not inside.exists() and not (tmp_path / "b").exists()


def test_parse_deadline(tmp_path):
    assert continuation.parse_deadline("17:30", NOW) == NOW + timedelta(minutes=30)
    assert continuation.parse_deadline("9:00", NOW) == NOW + timedelta(hours=16)
    iso = continuation.parse_deadline("2026-06-13T08:15", NOW)
    assert iso == NOW + timedelta(hours=15, minutes=15)
    with pytest.raises(ValueError, match="neither HH:MM"):
        continuation.parse_deadline("tomorrow", NOW)


# --------------------------------------------------------------------------------------------
# finish
# --------------------------------------------------------------------------------------------


def _spoiled(path: Path, out: Path) -> Path:
    """The weights of ``path`` with an output bias that paints every pixel white."""
    meta, state = load_weights(path)
    model = model_from_weights(path)[0]
    state["last.bias"] = state["last.bias"] + 5.0
    model.load_state_dict(state)
    save_weights(model, meta["model"], out)
    return out


def test_finish_ships_better_weights_and_records_them(copies, monkeypatch):
    weights, run = copies
    _spoiled(weights / "nir-gnn.safetensors", weights / "nir-gnn.safetensors")
    drawn = []
    monkeypatch.setattr(continuation, "regenerate_figure", lambda *args: drawn.append(args))
    log_before = (weights / "nir-gnn.log.jsonl").read_text()
    card = weights / "MODEL_CARD.md"
    result = finish(run, weights, card, figure=Path("fig.png"), figure_script=Path("s.py"), now=NOW)

    assert result["shipped"] is True
    best = max(result["holdout"].values(), key=lambda m: m["psnr"])
    assert best["psnr"] > result["shipped_holdout"]["psnr"]
    assert result["holdout"][result["selected"]] == best
    shipped = (weights / "nir-gnn.safetensors").read_bytes()
    assert shipped == (run / "nir-gnn.safetensors").read_bytes()
    meta = json.loads((weights / "nir-gnn.json").read_text())
    assert meta == json.loads((run / "nir-gnn.json").read_text())
    assert meta["iterations"] == 8 + 6 and meta["data"] == "synthetic"
    assert meta["lineage"][-1]["selected"] == result["selected"]
    assert meta["lineage"][-1]["train_config"] == json.loads((run / "train.json").read_text())
    assert meta["validation"]["psnr"] == pytest.approx(result["validation"]["psnr"], abs=1e-4)
    # The shipped weights score what finish measured (selection on the held-out pair img1).
    model = model_from_weights(weights / "nir-gnn.safetensors")[0]
    pairs, _, _ = continuation._evaluation_data(
        continuation._run_config(torch.load(run / "checkpoint.pt", weights_only=True), run, None)
    )
    assert [name for name, *_ in pairs] == ["img1"]
    assert continuation._score(model, pairs) == best
    log = (weights / "nir-gnn.log.jsonl").read_text()
    assert log.startswith(log_before) and json.loads(log.splitlines()[-1])["run"] == "run"
    rows = [line for line in card.read_text().splitlines() if line.startswith("| 2026")]
    assert len(rows) == 1 and rows[0].endswith("| yes |") and "| 14 |" in rows[0]
    assert len(drawn) == 1 and drawn[0][0] == Path("fig.png")


def test_finish_keeps_shipped_weights_that_are_as_good(copies, monkeypatch):
    weights, run = copies
    # First finish a copy elsewhere to learn the run's best weights, then ship exactly those.
    other, run_copy = run.parent / "other", run.parent / "run_copy"
    shutil.copytree(weights, other)
    shutil.copytree(run, run_copy)
    first = finish(run_copy, other, other / "MODEL_CARD.md", now=NOW)
    shutil.copy(first["weights"], weights / "nir-gnn.safetensors")
    with pytest.raises(ValueError, match="finished already"):
        finish(run_copy, other, other / "MODEL_CARD.md", now=NOW)
    before = {p.name: p.read_bytes() for p in weights.iterdir() if p.name != "MODEL_CARD.md"}
    monkeypatch.setattr(continuation, "regenerate_figure", pytest.fail)
    result = finish(run, weights, weights / "MODEL_CARD.md", figure=Path("f.png"), now=NOW)
    assert result["shipped"] is False
    assert result["shipped_holdout"] == result["holdout"][result["selected"]]
    assert {
        p.name: p.read_bytes() for p in weights.iterdir() if p.name != "MODEL_CARD.md"
    } == before
    row = (weights / "MODEL_CARD.md").read_text().splitlines()[-1]
    assert row.endswith("| no |")


def test_finish_refuses_a_foreign_folder(copies, tmp_path):
    weights, _ = copies
    with pytest.raises(ValueError, match=r"no continue\.json"):
        finish(tmp_path, weights, weights / "MODEL_CARD.md")


def test_ledger_rows_go_under_the_heading(tmp_path):
    card = tmp_path / "card.md"
    card.write_text("# Card\n\n## Training ledger\n\nWhat it is.\n\n## Later section\n\nText.\n")
    append_ledger_row(card, "| row 1 |")
    append_ledger_row(card, "| row 2 |")
    lines = card.read_text().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| date (UTC) |") and table[2:] == ["| row 1 |", "| row 2 |"]
    assert lines.index(LEDGER_HEADING) < lines.index("| row 2 |") < lines.index("## Later section")
    fresh = tmp_path / "fresh.md"
    append_ledger_row(fresh, "| row |")
    assert fresh.read_text().splitlines()[-1] == "| row |"


def test_command_line(copies, tmp_path, capsys):
    weights, run = copies
    argv = ["finish", str(run), "--weights-dir", str(weights), "--no-figure"]
    assert continuation.main(argv) == 0
    out = capsys.readouterr().out
    assert "raw: held-out PSNR" in out and "ledger row: | " in out
    assert (weights / "MODEL_CARD.md").read_text().count("\n| 20") == 1  # its default card
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    argv = ["start", "--data", str(tmp_path), "--out", str(tmp_path / "repo" / "run")]
    assert continuation.main([*argv, "--until", "23:59", "--threads", "1"]) == 2
    assert "inside the git work tree" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# issue 24: liveness, early interrupts, bad input
# --------------------------------------------------------------------------------------------


def _holder(path: Path) -> subprocess.Popen:
    """A process that holds an exclusive ``flock`` on ``path`` (as a trainer does on its
    run's lock file) until killed; its command line does not name the run."""
    code = (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
        "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert holder.stdout.readline() == b"locked\n"
    return holder


def test_finish_through_a_symlink_sees_the_trainer_by_its_lock(copies, tmp_path):
    weights, run = copies
    assert (run / continuation.LOCK_NAME).is_file()  # start made it; the trainer has exited
    link = tmp_path / "latest"
    link.symlink_to(run)
    holder = _holder(run / continuation.LOCK_NAME)
    try:
        with pytest.raises(ValueError, match="still runs"):
            finish(link, weights, weights / "MODEL_CARD.md")
    finally:
        holder.kill()
        holder.wait()
    assert not (run / "nir-gnn.json").exists()
    assert "| 20" not in (weights / "MODEL_CARD.md").read_text()  # no ledger row


def test_finish_through_a_symlink_sees_the_trainer_of_an_old_run_folder(copies, tmp_path):
    # A run folder of an older start: no lock file, only the pid in continue.json, and a
    # trainer whose command line names the real path.
    weights, run = copies
    (run / "trainer.lock").unlink(missing_ok=True)
    record = json.loads((run / "continue.json").read_text())
    record.pop("lock", None)
    link = tmp_path / "latest"
    link.symlink_to(run)
    sleeper = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print(1, flush=True); time.sleep(60)",
         "--out", str(run)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert sleeper.stdout.readline() == b"1\n"  # exec'd: its command line is set
        (run / "continue.json").write_text(json.dumps({**record, "pid": sleeper.pid}))
        with pytest.raises(ValueError, match=f"still runs .*kill -INT {sleeper.pid}"):
            finish(link, weights, weights / "MODEL_CARD.md")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not (run / "nir-gnn.json").exists()


def test_start_holds_the_lock_for_the_trainer(tmp_path, monkeypatch):
    weights = tmp_path / "w.pt"
    save_weights(model_from_weights(default_weights_path("nir-gnn"))[0], "nir-gnn", weights)
    data, recipe = _data_and_recipe(tmp_path)
    seen = {}

    def run(argv, **kwargs):
        lock = tmp_path / "run" / continuation.LOCK_NAME
        seen["held"] = continuation._lock_held(lock)
        seen["passed"] = kwargs.get("pass_fds", ())
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(continuation.subprocess, "run", run)
    args = dict(weights=weights, recipe=recipe, iterations_before=40, replace_process=False)
    args["now"] = NOW
    assert start(data, tmp_path / "run", NOW + timedelta(hours=1), 1, **args) == 0
    assert seen["held"] and len(seen["passed"]) == 1  # the child inherits the lock
    assert not continuation._lock_held(tmp_path / "run" / continuation.LOCK_NAME)
    record = json.loads((tmp_path / "run" / "continue.json").read_text())
    assert record["lock"] == continuation.LOCK_NAME


def test_start_execs_the_trainer_with_sigint_and_the_lock(tmp_path, monkeypatch):
    # A script's background job (`start ... &`) inherits SIGINT ignored, and an ignored
    # signal stays ignored through exec: start restores the default before it execs.
    weights = tmp_path / "w.pt"
    save_weights(model_from_weights(default_weights_path("nir-gnn"))[0], "nir-gnn", weights)
    data, recipe = _data_and_recipe(tmp_path)
    seen = {}

    class ExecError(Exception):
        pass

    def execve(path, argv, env):
        seen["sigint"] = signal.getsignal(signal.SIGINT)
        lock = tmp_path / "run" / continuation.LOCK_NAME
        seen["held"] = continuation._lock_held(lock)
        raise ExecError

    monkeypatch.setattr(continuation.os, "dup2", lambda *a: None)  # keep pytest's stdout
    monkeypatch.setattr(continuation.os, "execve", execve)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(ExecError):
            start(data, tmp_path / "run", NOW + timedelta(hours=1), 1, weights=weights,
                  recipe=recipe, iterations_before=40, now=NOW)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == {"sigint": signal.SIG_DFL, "held": True}


def test_finish_reports_a_run_without_checkpoint(copies):
    # A trainer interrupted before its first checkpoint (e.g. while importing).
    weights, run = copies
    (run / "checkpoint.pt").unlink()
    with pytest.raises(ValueError, match=r"no checkpoint\.pt: its trainer stopped before"):
        finish(run, weights, weights / "MODEL_CARD.md")


@pytest.mark.parametrize("text", ["{", "[1, 2]", '{"format": "other"}', "\xff\xfe"])
def test_finish_names_an_invalid_record(copies, text):
    weights, run = copies
    (run / "continue.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"continue\.json"):
        finish(run, weights, weights / "MODEL_CARD.md")


def test_finish_names_missing_record_fields(copies):
    weights, run = copies
    record = json.loads((run / "continue.json").read_text())
    del record["previous_metadata"]
    (run / "continue.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"continue\.json .*previous_metadata"):
        finish(run, weights, weights / "MODEL_CARD.md")
    assert not (run / "nir-gnn.safetensors").exists()


@pytest.mark.parametrize("case", ["missing", "empty", "unpaired", "holdout"])
def test_start_refuses_bad_data_before_announcing(case, tmp_path, capsys, monkeypatch):
    def execve(*args):  # were the data accepted, this process would become the trainer
        raise AssertionError("start got as far as exec")

    monkeypatch.setattr(continuation.os, "dup2", lambda *a: None)
    monkeypatch.setattr(continuation.os, "execve", execve)
    weights = tmp_path / "w.pt"
    save_weights(model_from_weights(default_weights_path("nir-gnn"))[0], "nir-gnn", weights)
    data = tmp_path / "data"
    if case == "empty":
        data.mkdir()
    elif case == "unpaired":
        _make_data(data)
        (data / "train" / "rgb" / "img1.png").unlink()
    elif case == "holdout":
        _make_data(data)  # the default holdout pairs are VCIP names, not img0..img2
    out = tmp_path / "run"
    argv = ["start", "--data", str(data), "--out", str(out), "--until", "2999-01-01T00:00"]
    argv += ["--threads", "1", "--weights", str(weights), "--iterations-before", "40"]
    argv += ["--margin", "0"]
    assert continuation.main(argv) == 2
    captured = capsys.readouterr()
    assert "training" not in captured.out
    assert str(data) in captured.err and captured.err.count("\n") == 1
    assert not out.exists()  # nothing half-made: the same --out works once the data is fixed


def test_selection_score_weighs_a_doubling_of_each_metric_alike():
    base = {"psnr": 17.0, "ssim": 0.50}
    more_psnr = {"psnr": 17.0 + continuation.PSNR_PER_DOUBLING, "ssim": 0.50}
    more_ssim = {"psnr": 17.0, "ssim": 0.50 + continuation.SSIM_PER_DOUBLING}
    score = continuation.selection_score
    assert score(more_psnr) - score(base) == pytest.approx(1.0)
    assert score(more_ssim) - score(base) == pytest.approx(1.0)


def _scores_by_candidate(monkeypatch, holdout: dict[str, dict[str, float]]) -> None:
    # finish scores the raw and EMA candidates in this order, then the shipped weights.
    order = iter([holdout["raw"], holdout["ema"], holdout["shipped"]])
    real = continuation._score
    monkeypatch.setattr(
        continuation,
        "_score",
        lambda model, pairs: next(order, None) or real(model, pairs),
    )


@pytest.mark.parametrize("declared", [True, False])
def test_finish_selects_and_ships_by_the_rule_the_run_declared(copies, monkeypatch, declared):
    weights, run = copies
    if not declared:  # a run started before selection rules were recorded: PSNR alone
        record = json.loads((run / "continue.json").read_text())
        del record["selection"]
        (run / "continue.json").write_text(json.dumps(record))
    ssim_wins = {"psnr": 17.00, "ssim": 0.520}  # 0.1 dB less, 0.02 more SSIM than raw
    holdout = {
        "raw": {"psnr": 17.10, "ssim": 0.500},
        "ema": ssim_wins,
        "shipped": {"psnr": 17.05, "ssim": 0.500},
    }
    for name in ("raw", "ema", "shipped"):
        holdout[name] = {**holdout[name], "ae_deg": 6.0, "ae_img_rad": 0.3}
    _scores_by_candidate(monkeypatch, holdout)
    result = finish(run, weights, weights / "MODEL_CARD.md", now=NOW)
    assert result["selected"] == ("ema" if declared else "raw")
    assert result["shipped"] is True  # both rules prefer the selected weights to the shipped
    row = (weights / "MODEL_CARD.md").read_text().splitlines()[-1]
    expected = "17.00 / 0.520 (EMA)" if declared else "17.10 / 0.500 (raw)"
    assert f"| {expected} | 17.05 / 0.500 |" in row


def test_finish_reads_an_old_run_folder(copies):
    # As the previous start wrote it: the trainer's options in the recorded command and no
    # train.json, and a checkpoint whose config has the architecture at the top level and
    # no register (so the run trained on the pairs as stored).
    weights, run = copies
    record = json.loads((run / "continue.json").read_text())
    record["command"] = "pyg-lecc train --data d --model nir-gnn --features 6 --rank 2"
    (run / "continue.json").write_text(json.dumps(record))
    (run / "train.json").unlink()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    arch = ckpt["config"].pop("arch")
    del ckpt["config"]["register"]
    ckpt["config"].update({k: arch[k] for k in ("features", "rank", "k", "layers_per_block")})
    torch.save(ckpt, run / "checkpoint.pt")
    config = continuation._run_config(ckpt, run, None)
    assert config.arch == TINY_ARCH and config.register is False
    result = finish(run, weights, weights / "MODEL_CARD.md", now=NOW)
    meta = json.loads((run / "nir-gnn.json").read_text())
    assert meta["command"] == record["command"] and "train_config" not in meta["lineage"][-1]
    assert result["iterations"] == 6
