"""bf16 on a CPU that only emulates it is turned into fp32 by the training CLI (one warning), else kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from jsonargparse import set_parsing_settings

import crossflow.cli as cli
from crossflow.datamodule import ShardDataModule
from crossflow.lit_module import CrossFlowLitModule

DEMO = str(Path(__file__).parent.parent / "configs" / "demo.yaml")


def _trainer_precision(tmp_path: Path, extra: list[str] = ()) -> str:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    built = cli.CrossFlowCLI(
        CrossFlowLitModule, ShardDataModule, run=False,
        args=["--config", DEMO, f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=false",
              "--trainer.callbacks=null", f"--data.train_shards={tmp_path}/none", *extra],
    )
    return str(built.trainer.precision)


@pytest.mark.parametrize("emulated, keep, expected", [
    (True, None, "32-true"), (False, None, "bf16-mixed"), (True, "1", "bf16-mixed"),
])
def test_cpu_bf16_falls_back_only_where_emulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    emulated: bool, keep: str | None, expected: str,
) -> None:
    monkeypatch.setattr(cli, "cpu_bf16_is_emulated", lambda: emulated)
    if keep is None:
        monkeypatch.delenv(cli.KEEP_CPU_BF16, raising=False)
    else:
        monkeypatch.setenv(cli.KEEP_CPU_BF16, keep)
    assert _trainer_precision(tmp_path) == expected
    warned = "no native bf16" in capsys.readouterr().err
    assert warned == (expected == "32-true")


def test_fp32_configs_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "cpu_bf16_is_emulated", lambda: True)
    assert _trainer_precision(tmp_path, ["--trainer.precision=32-true"]) == "32-true"


def test_the_probe_answers_a_bool() -> None:
    assert isinstance(cli.cpu_bf16_is_emulated(), bool)
