"""``crossflow sweep`` on tiny saved models (CrossFlow and the noise baseline): files, rows, NFE, reproducibility,
the fewest-steps summary, and one-line errors."""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from crossflow.__main__ import main as crossflow_main
from crossflow.config import ModelConfig
from crossflow.errors import CrossFlowError
from crossflow.eval.run import generate_images, shapes_prompt_set
from crossflow.eval.sweep import (
    COLUMNS,
    default_label,
    fewest_steps,
    fewest_steps_summary,
    generate,
    parse_ckpt,
    run_sweep,
)
from crossflow.inference import CrossFlowPipeline
from crossflow.models.flow_model import build_model
from crossflow.models.text_encoder import FrozenTextEncoder

IMAGE_SIZE = 16  # the shapes generator's minimum
NUM = 8
STEPS = [1, 3]
CFGS = [1.0, 2.0]
SOLVERS = ["euler", "heun", "midpoint", "dopri5"]
TOLERANCE = 1e-2  # dopri5's rtol = atol: loose, so its rows take tens of evaluations rather than hundreds


def _save_tiny(config: ModelConfig, directory: Path, kind: str = "crossflow") -> str:
    """A randomly initialised tiny model at 16 px, nudged off its zero init, saved as a folder."""
    config = copy.deepcopy(config)
    config.codec.image_size = IMAGE_SIZE
    config.kind = kind  # type: ignore[assignment]
    config.baseline.text_depth = 1
    with torch.random.fork_rng():
        torch.manual_seed(0)
        text_encoder = FrozenTextEncoder(config.text_encoder)
        model = build_model(config, text_dim=text_encoder.hidden_size)
        with torch.no_grad():  # off the zero init, so the velocity depends on x, t and the guidance branch
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return str(CrossFlowPipeline(config, model.eval(), text_encoder).save_pretrained(directory))


@pytest.fixture(scope="module")
def models(tiny_model_config_session: ModelConfig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sweep_models")
    return {"cf": _save_tiny(tiny_model_config_session, root / "cf"),
            "base": _save_tiny(tiny_model_config_session, root / "base", kind="noise_baseline")}


def _args(out: Path, *extra: str) -> list[str]:
    return ["--out", str(out), "--num", str(NUM), "--batch-size", str(NUM), "--no-progress", *extra]


@pytest.fixture(scope="module")
def swept(models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """The full grid through ``crossflow sweep``: one labelled model, one bare path labelled by its folder."""
    pytest.importorskip("matplotlib", reason="the 'plot' extra (matplotlib) is not installed")
    pytest.importorskip("torchdiffeq", reason="the 'ode' extra (torchdiffeq) is not installed")
    out = tmp_path_factory.mktemp("sweep")
    sys_argv = sys.argv
    try:
        crossflow_main(["sweep", "--ckpt", f"crossflow={models['cf']}", "--ckpt", models["base"],
                        "--solvers", *SOLVERS, "--steps", *map(str, STEPS), "--cfg-scales", *map(str, CFGS),
                        "--rtol", str(TOLERANCE), "--atol", str(TOLERANCE), *_args(out)])
    finally:
        sys.argv = sys_argv  # the dispatcher rewrites it for argparse
    return json.loads((out / "sweep.json").read_text()), out, models["base"]


def test_writes_json_csv_markdown_and_plot(swept: tuple[dict[str, Any], Path, str]) -> None:
    report, out, _ = swept
    for name in ("sweep.json", "sweep.csv", "sweep.md", "sweep.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["command"] == "crossflow sweep" and "git_sha" in report
    assert report["settings"]["seed"] == 2024 and report["settings"]["num"] == NUM
    assert [m["kind"] for m in report["models"]] == ["crossflow", "noise_baseline"]
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS and len(table) == len(report["rows"])
    assert {r["steps"] for r in table if r["solver"] == "dopri5"} == {""}
    markdown = (out / "sweep.md").read_text()
    assert "| model | solver | steps |" in markdown and "adaptive" in markdown
    assert markdown.count("\n| ") == len(report["rows"]) + 1  # header + one line per row


def test_rows_cover_every_setting_for_both_model_kinds(swept: tuple[dict[str, Any], Path, str]) -> None:
    report, _, base_path = swept
    labels = ["crossflow", Path(base_path).name]  # a bare folder is labelled by its name
    expected = {(m, s, n, w) for m in labels for w in CFGS for s in SOLVERS
                for n in ([None] if s == "dopri5" else STEPS)}
    got = [(r["model"], r["solver"], r["steps"], r["cfg"]) for r in report["rows"]]
    assert sorted(got, key=str) == sorted(expected, key=str) and len(got) == len(set(got))
    for row in report["rows"]:
        assert set(row) == set(COLUMNS)
        assert 0.0 <= row["all_correct"] <= min(row[k] for k in ("color", "position", "size", "shape"))
        assert row["seconds"] > 0 and row["images_per_s"] > 0 and row["threads"] == torch.get_num_threads()


def test_nfe_is_what_the_solvers_count(swept: tuple[dict[str, Any], Path, str]) -> None:
    report, _, _ = swept
    for row in report["rows"]:
        per_step = {"euler": 1, "heun": 2, "midpoint": 2}  # Heun's last step evaluates its corrector at t = 1 too
        if row["solver"] == "dopri5":
            # One batch: 2 start-up evaluations + 6 per attempted step (crossflow/sampling.py).
            assert row["steps"] is None and row["nfe"] >= 8 and (row["nfe"] - 2) % 6 == 0
        else:
            assert row["nfe"] == per_step[row["solver"]] * row["steps"]
        assert row["model_evals"] == row["nfe"] * (2 if row["cfg"] > 1 else 1)


def test_same_seed_gives_the_same_scores(swept: tuple[dict[str, Any], Path, str], models: dict[str, str],
                                         tmp_path: Path) -> None:
    report, _, _ = swept
    again = run_sweep([f"crossflow={models['cf']}"], str(tmp_path), solvers=["heun", "dopri5"], steps=[3],
                      cfg_scales=[2.0], num=NUM, batch_size=NUM, rtol=TOLERANCE, atol=TOLERANCE, progress=False)
    keys = ("nfe", "color", "position", "size", "shape", "all_correct")
    first = {(r["solver"], r["steps"]): [r[k] for k in keys] for r in report["rows"]
             if r["model"] == "crossflow" and r["cfg"] == 2.0 and r["solver"] in ("heun", "dopri5")
             and r["steps"] in (3, None)}
    assert {(r["solver"], r["steps"]): [r[k] for k in keys] for r in again["rows"]} == first


def test_images_are_crossflow_evals(models: dict[str, str]) -> None:
    """The sweep's setting draws the very images `crossflow eval` draws for the same options (uneven batches)."""
    pipe = CrossFlowPipeline.from_pretrained(models["base"])
    captions = shapes_prompt_set(5, 2024, "train", IMAGE_SIZE).captions
    images, nfe = generate(pipe, captions, "midpoint", 2, 2.0, seed=7, batch_size=3)
    assert nfe == 4
    assert torch.equal(images, generate_images(pipe, captions, 2, 2.0, "midpoint", seed=7, batch_size=3, progress=False))


def test_bf16_and_no_fewest_steps_without_a_reference(models: dict[str, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib", reason="the 'plot' extra (matplotlib) is not installed")
    report = run_sweep([models["cf"]], str(tmp_path), solvers=["euler"], steps=[2], cfg_scales=[2.5], num=4,
                       batch_size=4, precision="bf16", progress=False)
    assert [(r["solver"], r["steps"], r["nfe"], r["model_evals"]) for r in report["rows"]] == [("euler", 2, 2, 4)]
    assert report["fewest_steps"] == [] and "no fewest-steps summary" in capsys.readouterr().out


def _row(model: str, solver: str, steps: int | None, cfg: float, all_correct: float) -> dict[str, Any]:
    return {"model": model, "solver": solver, "steps": steps, "cfg": cfg, "all_correct": all_correct}


def test_fewest_steps_on_hand_made_rows() -> None:
    rows = [
        _row("a", "euler", 50, 2.5, 0.80), _row("a", "euler", 8, 2.5, 0.70), _row("a", "euler", 16, 2.5, 0.76),
        _row("a", "euler", 32, 2.5, 0.79), _row("a", "heun", 4, 2.5, 0.50), _row("a", "heun", 8, 2.5, 0.78),
        _row("a", "heun", 16, 2.5, 0.81), _row("a", "dopri5", None, 2.5, 0.99),
        _row("a", "euler", 1, 1.0, 0.80), _row("b", "euler", 2, 2.5, 0.80),
    ]
    assert fewest_steps(rows, "a", "euler", 2.5, 0.80) == 16  # 0.76 is exactly 95% of 0.80: kept
    assert fewest_steps(rows, "a", "heun", 2.5, 0.80) == 8
    assert fewest_steps(rows, "a", "heun", 2.5, 0.80, fraction=1.0) == 16
    assert fewest_steps(rows, "a", "heun", 2.5, 0.90) is None  # nothing reaches 0.855
    assert fewest_steps(rows, "a", "midpoint", 2.5, 0.80) is None  # no rows at all
    assert fewest_steps(rows, "a", "dopri5", 2.5, 0.0) is None  # adaptive rows have no step count
    assert fewest_steps(rows, "a", "euler", 1.0, 0.80) == 1  # guidance scales and models stay apart
    summary = fewest_steps_summary(rows)
    assert summary == [{"model": "a", "cfg": 2.5, "fraction": 0.95,
                        "reference": {"solver": "euler", "steps": 50, "all_correct": 0.80},
                        "fewest": {"euler": {"steps": 16, "nfe": 16}, "heun": {"steps": 8, "nfe": 16}}}]


def test_labels(tmp_path: Path) -> None:
    ckpt = tmp_path / "runs" / "demo" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    assert default_label(str(ckpt)) == "demo"  # "checkpoints" names nothing: the run folder does
    assert default_label(str(ckpt.parent.parent)) == "demo"
    assert parse_ckpt(f"mine={ckpt}").label == "mine"
    assert parse_ckpt(str(ckpt)).label == "demo"


@pytest.mark.parametrize(("extra", "message"), [
    (["--ckpt", "nope/missing.ckpt"], "checkpoint not found: nope/missing.ckpt"),
    (["--solvers", "rk4"], "unknown solver 'rk4'"),
    (["--steps", "4", "0"], "--steps must be positive, got 0"),
    (["--steps"], "--steps is empty"),
    (["--cfg-scales", "0.5"], "--cfg-scales must be >= 1"),
    (["--cfg-scales"], "--cfg-scales is empty"),
    (["--num", "0"], "--num must be positive"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--solvers", "dopri5", "--rtol", "0"], "--rtol and --atol must be positive"),
    (["--ckpt-twice"], "two checkpoints are labelled"),
])
def test_bad_input_is_one_line(extra: list[str], message: str, models: dict[str, str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    from crossflow.eval.sweep import main

    ckpts = ["--ckpt", models["cf"]]
    if extra == ["--ckpt-twice"]:
        extra = ["--ckpt", f"{Path(models['base']).name}={models['cf']}", "--ckpt", models["base"]]
    elif extra[0] == "--ckpt":
        ckpts = []
    with pytest.raises(SystemExit) as exit_info:
        main([*ckpts, *_args(tmp_path / "out"), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists(), "refused before writing anything"


def test_no_checkpoint_and_no_solvers_are_errors(tmp_path: Path) -> None:
    with pytest.raises(CrossFlowError, match="--ckpt"):
        run_sweep([], str(tmp_path))
    with pytest.raises(CrossFlowError, match="--solvers is empty"):
        run_sweep(["x"], str(tmp_path), solvers=[])


def test_missing_matplotlib_still_writes_the_tables(models: dict[str, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(CrossFlowError, match=r"pip install 'crossflow\[plot\]'"):
        run_sweep([models["cf"]], str(tmp_path), solvers=["euler"], steps=[1], cfg_scales=[1.0], num=2,
                  batch_size=2, progress=False)
    assert all((tmp_path / name).exists() for name in ("sweep.json", "sweep.csv", "sweep.md"))
    assert not (tmp_path / "sweep.png").exists()
