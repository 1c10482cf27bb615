"""Every YAML in configs/ parses against the real CLI (types, choices, links), without instantiating models."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crossflow.cli import main as train_main

CONFIG_DIR = Path(__file__).parent.parent / "configs"
CONFIGS = sorted(str(p) for p in CONFIG_DIR.glob("*.yaml"))
TRAINER_OVERLAYS = sorted(str(p) for p in (CONFIG_DIR / "trainer").glob("*.yaml"))


def test_there_are_configs() -> None:
    assert any(c.endswith("demo.yaml") for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=[Path(c).name for c in CONFIGS])
def test_config_parses(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train_main(["fit", "--config", config, "--print_config"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "model:" in printed and "preset:" in printed and "train_shards:" in printed


def test_there_are_trainer_overlays() -> None:
    assert {Path(c).stem for c in TRAINER_OVERLAYS} >= {"single", "ddp", "fsdp2"}


@pytest.mark.parametrize("overlay", TRAINER_OVERLAYS, ids=[Path(c).name for c in TRAINER_OVERLAYS])
def test_trainer_overlay_parses(overlay: str, capsys: pytest.CaptureFixture[str]) -> None:
    """configs/trainer/*.yaml are ``--trainer`` overlays on any model config."""
    with pytest.raises(SystemExit) as exc:
        train_main(["fit", "--config", str(CONFIG_DIR / "demo.yaml"), "--trainer", overlay, "--print_config"])
    assert exc.value.code == 0
    assert "strategy:" in capsys.readouterr().out


def test_image_size_is_linked_not_repeated() -> None:
    """data.image_size follows model.model.codec.image_size (derived sizes are never repeated in YAML)."""
    for config in CONFIGS:
        assert "image_size" not in Path(config).read_text().split("\ndata:")[1], config


DATA_OVERLAYS = sorted(str(p) for p in (CONFIG_DIR / "data").glob("*.yaml"))


@pytest.mark.parametrize("base", ["demo.yaml", "baseline_demo.yaml"])
@pytest.mark.parametrize("overlay", DATA_OVERLAYS, ids=[Path(c).name for c in DATA_OVERLAYS])
def test_data_overlay_parses(base: str, overlay: str, capsys: pytest.CaptureFixture[str]) -> None:
    """configs/data/*.yaml are second ``--config`` files on top of a model config."""
    with pytest.raises(SystemExit) as exc:
        train_main(["fit", "--config", str(CONFIG_DIR / base), "--config", overlay, "--print_config"])
    assert exc.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)["data"]
    wanted = yaml.safe_load(Path(overlay).read_text())["data"]

    def contained(want: object, got: object) -> bool:  # every key the overlay sets, with its value
        if isinstance(want, dict):
            return isinstance(got, dict) and all(contained(v, got.get(k)) for k, v in want.items())
        return want == got

    assert contained(wanted, printed), f"{overlay} did not reach the parsed config: {printed}"
