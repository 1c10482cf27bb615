"""The weight space of instance fine-tunes (crossflow.weight_space): banked LoRA routing and modes, the one-run bank
training, PCA round trips, directions, delayed injection, inversion, files, and the ``crossflow edit w2w-*`` verbs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from crossflow.__main__ import main as crossflow_main
from crossflow.config import ModelConfig
from crossflow.data.shapes import instance_caption, render_instance, sample_instances
from crossflow.errors import CrossFlowError
from crossflow.inference import CrossFlowPipeline
from crossflow.models.codec import CodecConfig
from crossflow.weight_space.bank import (
    BankedLoRALinear,
    LoraBank,
    TextOffsetBank,
    load_bank,
    read_bank,
    save_bank,
)
from crossflow.weight_space.generate import injected_velocity, render_references, sample_instance
from crossflow.weight_space.inversion import coefficient_loss, invert
from crossflow.weight_space.objective import encode_prompt, instance_flow_loss
from crossflow.weight_space.space import WeightSpace
from crossflow.weight_space.training import BankTrainConfig, InstanceBatches, train_bank

IMAGE_SIZE = 16  # the smallest canvas the shapes renderer draws


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def config16(tiny_model_config_session: ModelConfig) -> ModelConfig:
    config = copy.deepcopy(tiny_model_config_session)
    config.codec = CodecConfig(kind="pixel", image_size=IMAGE_SIZE, channels=3)
    return config


@pytest.fixture
def pipe(config16: ModelConfig, random_pipeline) -> CrossFlowPipeline:
    """A fresh random tiny pipeline per test (banks are attached to the model in place)."""
    return random_pipeline(copy.deepcopy(config16))


def _inputs(pipe: CrossFlowPipeline, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(batch, *pipe.config.latent_shape, generator=_g(1))
    return x, torch.rand(batch, generator=_g(2))


def _randomise(bank: LoraBank, scale: float = 0.1) -> None:
    """Non-zero B for every instance (B starts at zero, so every update would be zero)."""
    with torch.no_grad():
        for index, layer in enumerate(bank.layers):
            layer.B.copy_(scale * torch.randn(layer.B.shape, generator=_g(index)))


# ------------------------------------------------------------------------------------------------- the layer


def test_a_fresh_bank_and_no_instances_leave_the_model_exactly_as_it_was(pipe: CrossFlowPipeline) -> None:
    x, t = _inputs(pipe)
    with torch.no_grad():
        before = pipe.model.velocity(x, t)
        bank = LoraBank.attach(pipe.model, num_instances=5, rank=2, generator=_g())
        assert all(isinstance(block.attn.qkv, BankedLoRALinear) for block in pipe.model.flow.blocks)
        assert torch.equal(pipe.model.velocity(x, t), before)  # no instances set
        with bank.instances([0, 1, 2, 3]):
            assert torch.equal(pipe.model.velocity(x, t), before)  # B = 0: every update is zero
        _randomise(bank)
        with bank.instances([-1, -1, -1, -1]):
            assert torch.equal(pipe.model.velocity(x, t), before)  # id -1: no instance
        with bank.instances([0, 1, 2, 3]):
            assert not torch.allclose(pipe.model.velocity(x, t), before)
        with bank.dense(None):
            assert torch.equal(pipe.model.velocity(x, t), before)
    assert [p.requires_grad for p in pipe.model.parameters()].count(True) == 2 * len(bank.layers)  # only A, B
    bank.detach(pipe.model)
    assert all(type(block.attn.qkv) is nn.Linear for block in pipe.model.flow.blocks)


def test_the_k_rows_are_untouched_and_q_v_rows_get_the_update(pipe: CrossFlowPipeline) -> None:
    bank = LoraBank.attach(pipe.model, num_instances=3, rank=2, generator=_g())
    _randomise(bank)
    layer = bank.layers[0]
    x = torch.randn(2, 5, layer.base.in_features, generator=_g(3))
    with torch.no_grad(), bank.instances([1, 2]):
        y = layer(x)
    base = layer.base(x).unflatten(-1, (3, layer.width))
    y = y.unflatten(-1, (3, layer.width))
    assert torch.equal(y[..., 1, :], base[..., 1, :])  # k
    for p, block in enumerate((0, 2)):  # q, v
        for b, instance in enumerate((1, 2)):
            delta = layer.B[instance, p] @ layer.A[instance, p]
            torch.testing.assert_close(y[b, :, block], base[b, :, block] + x[b] @ delta.T)


def test_shared_init_starts_every_instance_from_one_a_and_their_deltas_share_a_row_space(
        pipe: CrossFlowPipeline) -> None:
    shared = LoraBank.attach(copy.deepcopy(pipe.model), num_instances=4, rank=2, generator=_g(), shared_init=True)
    independent = LoraBank.attach(pipe.model, num_instances=4, rank=2, generator=_g())
    a_shared, a_independent = shared.layers[0].A, independent.layers[0].A
    assert all(torch.equal(a_shared[i], a_shared[0]) for i in range(4))
    assert not torch.equal(a_independent[1], a_independent[0])
    _randomise(shared)
    _randomise(independent)
    for bank, expected_rank in ((shared, 2), (independent, 8)):  # 4 instances x rank 2
        layer = bank.layers[0]
        with torch.no_grad():
            deltas = torch.stack([layer.B[i, 0] @ layer.A[i, 0] for i in range(4)])  # (4, D, D_in)
        # All instances' ΔW rows together span the A rows: one rank-2 space when shared, 4 x 2 dims when not.
        assert torch.linalg.matrix_rank(deltas.reshape(-1, deltas.shape[-1])) == expected_rank
    # Separate storage per instance: training one instance's A leaves the others' alone.
    with torch.no_grad():
        a_shared[1].add_(1.0)
    assert torch.equal(a_shared[2], a_shared[0]) and not torch.equal(a_shared[1], a_shared[0])


def test_each_samples_gradient_reaches_only_its_instance(pipe: CrossFlowPipeline) -> None:
    bank = LoraBank.attach(pipe.model, num_instances=4, rank=2, generator=_g())
    _randomise(bank)
    x, t = _inputs(pipe, batch=2)
    with bank.instances([1, 3]):
        v = pipe.model.velocity(x, t)
    v[0].pow(2).sum().backward()  # sample 0's loss only: instance 1
    for layer in bank.layers:
        assert layer.A.grad[1].abs().sum() > 0 and layer.B.grad[1].abs().sum() > 0
        for other in (0, 2, 3):
            assert layer.A.grad[other].abs().sum() == 0 and layer.B.grad[other].abs().sum() == 0
    assert all(p.grad is None for p in pipe.model.parameters() if not p.requires_grad)


def test_dense_mode_equals_merging_the_delta_into_the_weights(pipe: CrossFlowPipeline) -> None:
    x, t = _inputs(pipe)
    merged = copy.deepcopy(pipe.model)
    bank = LoraBank.attach(pipe.model, num_instances=3, rank=2, generator=_g())
    _randomise(bank)
    delta = bank.deltas([2])[0]  # (L, P, D, D)
    assert delta.shape == bank.vector_shape == (len(bank.layers), 2, 128, 128)
    with torch.no_grad():
        for index, block in enumerate(merged.flow.blocks):
            width = block.attn.qkv.out_features // 3
            block.attn.qkv.weight[:width] += delta[index, 0]  # q rows
            block.attn.qkv.weight[2 * width:] += delta[index, 1]  # v rows
        expected = merged.velocity(x, t)
        with bank.dense(delta):
            dense = pipe.model.velocity(x, t)
        with bank.instances([2] * len(x)):
            routed = pipe.model.velocity(x, t)
    torch.testing.assert_close(dense, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(routed, expected, rtol=1e-5, atol=1e-5)


def test_dense_only_layers_freeze_nothing_and_are_reused(pipe: CrossFlowPipeline) -> None:
    trainable = [p.requires_grad for p in pipe.model.parameters()]
    bank = LoraBank.attach_dense(pipe.model)
    assert bank.num_instances == 0 and LoraBank.attach_dense(pipe.model).layers == bank.layers
    assert [p.requires_grad for p in pipe.model.parameters() if p.numel()] == trainable
    with pytest.raises(CrossFlowError, match="adapts"):
        LoraBank.attach_dense(pipe.model, targets=("q",))


def test_bad_ids_shapes_and_nesting_are_one_line_errors(pipe: CrossFlowPipeline) -> None:
    bank = LoraBank.attach(pipe.model, num_instances=3, rank=1)
    with pytest.raises(CrossFlowError, match="instance ids"), bank.instances([3]):
        pass
    with pytest.raises(CrossFlowError, match="dense ΔW must have shape"), bank.dense(torch.zeros(2, 2)):
        pass
    with pytest.raises(CrossFlowError, match="do not nest"), bank.instances([0]), bank.dense(None):
        pass
    with pytest.raises(CrossFlowError, match="already carries"):
        LoraBank.attach(pipe.model, num_instances=2)
    x, t = _inputs(pipe, batch=3)
    with pytest.raises(CrossFlowError, match="2 entries for a batch of 3"), bank.instances([0, 1]):
        pipe.model.velocity(x, t)


# ---------------------------------------------------------------------------------------------- training


def test_instance_batches_visit_every_instance_equally() -> None:
    instances = sample_instances(6, seed=0)
    stream = iter(InstanceBatches(instances, IMAGE_SIZE, batch_size=8, images_per_instance=2, seed=0))
    ids = torch.cat([next(stream)["ids"] for _ in range(3)])  # 3 batches x 4 instances = 2 whole passes
    assert torch.bincount(ids, minlength=6).tolist() == [4] * 6
    batch = next(stream)
    assert batch["image"].shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE) and 0 <= batch["image"].min() <= batch["image"].max() <= 1


def test_a_fixed_position_places_every_training_image_there() -> None:
    # The demo model draws cleanly only from captions that state a position: a bank can pin its images to one.
    instances = sample_instances(4, seed=1)
    stream = iter(InstanceBatches(instances, 32, batch_size=8, images_per_instance=2, seed=0, position="top left"))
    images = next(stream)["image"]
    for image in images:
        ys, xs = torch.nonzero(image.amax(0) > 0, as_tuple=True)
        assert xs.float().mean() < 16 and ys.float().mean() < 16  # the object's centroid lies in the top-left quarter
    with pytest.raises(CrossFlowError, match="unknown position"):
        BankTrainConfig(position="middle")


@pytest.fixture
def time_shifts(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The ``shift`` of every flow.sample_time call from here on."""
    from crossflow import flow

    shifts: list[float] = []
    sample_time = flow.sample_time

    def recording(*args, shift: float = 1.0, **kwargs):  # noqa: ANN002, ANN003, ANN202
        shifts.append(shift)
        return sample_time(*args, shift=shift, **kwargs)

    monkeypatch.setattr(flow, "sample_time", recording)
    return shifts


def test_the_bank_trains_on_its_time_shift(pipe: CrossFlowPipeline, time_shifts: list[float]) -> None:
    # A bank that fine-tunes a base trained with a time shift should see the same t distribution (the demo: 0.25).
    config = BankTrainConfig(rank=1, steps=2, batch_size=4, images_per_instance=2, time_shift=0.25)
    _, record = train_bank(pipe, sample_instances(2, seed=1), config, progress=False)
    assert time_shifts == [0.25, 0.25] and record.training["time_shift"] == 0.25
    with pytest.raises(CrossFlowError, match="time_shift must be positive"):
        BankTrainConfig(time_shift=0.0)


@pytest.mark.parametrize("kind", ["lora", "text"])
def test_one_run_trains_every_instance_and_the_file_round_trips(pipe: CrossFlowPipeline, kind: str,
                                                                tmp_path: Path) -> None:
    instances = sample_instances(4, seed=1)
    config = BankTrainConfig(kind=kind, rank=1, steps=3, batch_size=8, images_per_instance=2)  # type: ignore[arg-type]
    bank, record = train_bank(pipe, instances, config, base_checkpoint="ckpt", progress=kind == "lora")
    vectors = bank.vectors()
    assert vectors.shape[0] == 4 and all(vectors[i].abs().sum() > 0 for i in range(4))  # all moved off zero
    assert record.training["seconds"] > 0 and record.training["final_flow_mse"] is not None
    assert record.prompt == instance_caption() and record.instances == instances
    path = save_bank(bank, record, tmp_path / "bank.safetensors")
    read, tensors = read_bank(path)
    assert read.instances == instances and read.training == json.loads(json.dumps(record.training))
    fresh = copy.deepcopy(pipe)
    if kind == "lora":
        LoraBank.of(fresh.model).detach(fresh.model)  # the copy carries the trained bank: back to the base first
    loaded, _ = load_bank(path, fresh.model)
    torch.testing.assert_close(loaded.vectors(), vectors)


def test_bank_loss_routes_each_sample_and_text_offsets_move_z_text(pipe: CrossFlowPipeline) -> None:
    prompt = encode_prompt(pipe, instance_caption())
    z_image = torch.rand(2, *pipe.config.latent_shape, generator=_g(5)) * 2 - 1
    bank = TextOffsetBank(3, pipe.model.variational.grid_shape)
    with torch.no_grad():
        bank.offsets[2].fill_(0.5)
    base = instance_flow_loss(pipe.model, prompt, z_image, _g(6))
    assert torch.equal(bank.flow_loss(pipe.model, prompt, z_image, torch.tensor([0, 1]), _g(6)), base)
    assert not torch.equal(bank.flow_loss(pipe.model, prompt, z_image, torch.tensor([0, 2]), _g(6)), base)


# ------------------------------------------------------------------------------------------------------- PCA


def _collection(n: int = 12, shape: tuple[int, ...] = (2, 3, 4), seed: int = 0) -> torch.Tensor:
    g = _g(seed)
    scales = torch.rand(shape, generator=g) * 3 + 0.1  # dimensions of very different scale
    return torch.randn(n, *shape, generator=g) * scales + torch.randn(shape, generator=g)


def test_pca_at_full_rank_reconstructs_the_collection_and_encode_decode_is_identity() -> None:
    vectors = _collection()
    space = WeightSpace.fit(vectors, k=12)
    torch.testing.assert_close(space.decode(space.encode(vectors)), vectors, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(space.coefficients, space.encode(vectors), rtol=1e-4, atol=1e-4)
    small = WeightSpace.fit(vectors, k=4)
    coeffs = torch.randn(5, 4, generator=_g(1))
    torch.testing.assert_close(small.encode(small.decode(coeffs)), coeffs, rtol=1e-4, atol=1e-4)
    assert torch.all(small.variances[:-1] >= small.variances[1:])  # components in order of variance
    assert small.sample(7, _g(2)).shape == (7, 4)
    for n, bad in ((0, 1.0), (3, -1.0), (3, math.nan)):
        with pytest.raises(CrossFlowError, match="need n >= 1|temperature must be a finite number >= 0"):
            small.sample(n, _g(2), temperature=bad)
    with pytest.raises(CrossFlowError, match="k must be in"):
        WeightSpace.fit(vectors, k=25)


def test_least_squares_recovers_a_planted_linear_attribute_and_edits_move_it_by_the_amount() -> None:
    g = _g(3)
    n, d = 60, 40
    direction = torch.randn(d, generator=g)
    attribute = torch.randn(n, generator=g)
    vectors = torch.randn(n, d, generator=g) * 0.05 + attribute[:, None] * direction  # planted along `direction`
    space = WeightSpace.fit(vectors, k=5, labels={"planted": attribute.tolist()})
    found = space.direction("planted")
    assert found.r2 > 0.99
    torch.testing.assert_close(found.predict(space.coefficients), attribute, rtol=0.05, atol=0.05)
    coeffs = space.coefficients[:3]
    edited = space.edit(coeffs, found, amount=2.0)
    torch.testing.assert_close(found.predict(edited) - found.predict(coeffs), torch.full((3,), 2.0))
    # The edit in weights is along the planted direction: the attribute read back off the vectors grows by 2.
    moved = space.decode(edited) - space.decode(coeffs)
    read = moved @ direction / direction.dot(direction)
    torch.testing.assert_close(read, torch.full((3,), 2.0), rtol=0.05, atol=0.05)
    with pytest.raises(CrossFlowError, match="no labels"):
        space.direction("hue")


def test_space_save_load_round_trip(tmp_path: Path) -> None:
    vectors = _collection()
    space = WeightSpace.fit(vectors, k=3, labels={"a": list(range(12))}, metadata={"kind": "lora", "token": "sks"})
    loaded = WeightSpace.load(space.save(tmp_path / "space.safetensors"))
    for name in ("mean", "std", "components", "variances", "coefficients"):
        assert torch.equal(getattr(loaded, name), getattr(space, name))
    assert loaded.vector_shape == space.vector_shape and loaded.labels == space.labels
    assert loaded.metadata == {"kind": "lora", "token": "sks"}
    with pytest.raises(CrossFlowError, match="not found"):
        WeightSpace.load(tmp_path / "missing.safetensors")


# ---------------------------------------------------------------------------------- sampling and inversion


def test_delayed_injection_at_0_is_the_edited_model_and_at_1_the_base(pipe: CrossFlowPipeline) -> None:
    bank = LoraBank.attach(pipe.model, num_instances=2, rank=2, generator=_g())
    _randomise(bank)
    edited = bank.deltas([0])[0]
    prompt = encode_prompt(pipe, instance_caption())
    common = dict(num_images=2, num_steps=4, guidance_scale=2.0)
    with torch.no_grad():
        with bank.dense(edited):
            want_edited = pipe.generate_latents(pipe.encode_prompts([instance_caption()] * 2, _g(7)), 4, 2.0)
        want_base = pipe.generate_latents(pipe.encode_prompts([instance_caption()] * 2, _g(7)), 4, 2.0)
    images = {t: sample_instance(pipe, prompt, "lora", edited, generator=_g(7), t_inject=t, **common)
              for t in (0.0, 0.5, 1.0)}
    torch.testing.assert_close(images[0.0], pipe.codec.decode(want_edited))
    torch.testing.assert_close(images[1.0], pipe.codec.decode(want_base))
    assert not torch.allclose(images[0.5], images[0.0]) and not torch.allclose(images[0.5], images[1.0])
    # Rows at different times in one batch are split between the two models.
    velocity = injected_velocity(pipe, edited, None, t_inject=0.5)
    x = torch.randn(2, *pipe.config.latent_shape, generator=_g(8))
    mixed = velocity(x, torch.tensor([0.2, 0.7]))
    torch.testing.assert_close(mixed[0], velocity(x[:1], torch.tensor([0.2]))[0])
    torch.testing.assert_close(mixed[1], velocity(x[1:], torch.tensor([0.7]))[0])


@pytest.mark.parametrize("kind", ["lora", "text"])
def test_text_temperature_scales_the_z_text_noise_of_instance_samples(pipe: CrossFlowPipeline, kind: str) -> None:
    bank = LoraBank.attach(pipe.model, num_instances=1, rank=2, generator=_g()) if kind == "lora" else None
    if bank is not None:
        _randomise(bank)
    vector = bank.deltas([0])[0] if bank is not None else 0.3 * torch.randn(pipe.config.latent_shape, generator=_g(2))
    prompt = encode_prompt(pipe, instance_caption())
    common = dict(num_images=3, num_steps=3)
    images = {t: sample_instance(pipe, prompt, kind, vector, generator=_g(7), temperature=t, **common)
              for t in (0.0, 0.5, 1.0)}
    # 1 is the default; 0 draws μ alone, so every seed gives the same image; 0.5 lies between.
    torch.testing.assert_close(images[1.0], sample_instance(pipe, prompt, kind, vector, generator=_g(7), **common))
    torch.testing.assert_close(images[0.0], images[0.0][:1].expand_as(images[0.0]))
    spread = {t: float((images[t] - images[t].mean(0)).abs().mean()) for t in images}
    assert spread[0.0] < 1e-6 < spread[0.5] < spread[1.0]
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(CrossFlowError, match="temperature .* must be a finite number >= 0"):
            sample_instance(pipe, prompt, kind, vector, generator=_g(7), temperature=bad, **common)


@pytest.mark.parametrize("kind", ["lora", "text"])
def test_inversion_reduces_the_flow_matching_loss(pipe: CrossFlowPipeline, kind: str) -> None:
    prompt = encode_prompt(pipe, instance_caption())
    z_image = pipe.codec.encode(render_references(sample_instances(1, seed=2), IMAGE_SIZE, np.random.default_rng(0)))
    if kind == "lora":
        bank = LoraBank.attach(pipe.model, num_instances=8, rank=2, generator=_g())
        _randomise(bank, scale=2.0)  # updates large enough to matter against a random model's error
        vectors = bank.vectors()
    else:  # offsets spread along the way from the prompt's latent to the image (plus noise): the space can reach it
        towards = (z_image - pipe.model.variational.upsample(prompt.mu))[0]
        spread = torch.randn(8, generator=_g(4))[:, None, None, None]
        vectors = spread * towards + 0.3 * torch.randn(8, *towards.shape, generator=_g(5))
    space = WeightSpace.fit(vectors, k=4, metadata={"kind": kind})

    def loss_at(coeffs: torch.Tensor) -> float:
        with torch.no_grad():
            return float(coefficient_loss(pipe, space, coeffs, z_image, prompt, batch_size=256, generator=_g(9)))

    result = invert(pipe, space, z_image, prompt, steps=30, lr=0.5, batch_size=16, generator=_g(10))
    assert result.coefficients.shape == (4,) and len(result.losses) == 30 and result.seconds > 0
    assert loss_at(result.coefficients) < 0.95 * loss_at(torch.zeros(4))
    assert all(p.grad is None for p in pipe.model.parameters())


def test_inversion_draws_t_with_the_banks_shift(pipe: CrossFlowPipeline, time_shifts: list[float]) -> None:
    prompt = encode_prompt(pipe, instance_caption())
    z_image = pipe.codec.encode(render_references(sample_instances(1, seed=2), IMAGE_SIZE, np.random.default_rng(0)))
    space = WeightSpace.fit(torch.randn(6, *pipe.model.variational.grid_shape, generator=_g(3)), k=2,
                            metadata={"kind": "text"})
    invert(pipe, space, z_image, prompt, steps=2, batch_size=4, generator=_g(10), time_shift=0.25)
    assert time_shifts == [0.25, 0.25]


# ------------------------------------------------------------------------------------------------------ CLI


def test_the_w2w_verbs_run_end_to_end_on_a_tiny_checkpoint(config16: ModelConfig, random_pipeline,
                                                             tmp_path: Path) -> None:
    random_pipeline(copy.deepcopy(config16)).save_pretrained(tmp_path / "model")
    model, out = str(tmp_path / "model"), tmp_path / "out"

    def run(*args: str) -> dict:
        crossflow_main(["edit", *args, "--out", str(out), "--steps", "3"])
        return json.loads((out / f"{args[0]}.json").read_text())

    trained = run("w2w-train", "--ckpt", model, "--instances", "6", "--rank", "1", "--train-steps", "2",
                  "--batch-size", "4", "--images-per-instance", "2")
    assert (out / "bank.safetensors").is_file() and trained["seconds"] > 0
    pca = run("w2w-pca", "--bank", str(out / "bank.safetensors"), "--k", "3", "--holdout", "2")
    assert pca["k"] == 3 and pca["models"] == 4 and pca["heldout"] == [4, 5]
    space = str(out / "space.safetensors")
    sampled = run("w2w-sample", "--ckpt", model, "--space", space, "--num", "2", "--seeds", "2")
    assert len(sampled["models"]) == 2 and (out / "samples.png").is_file()
    steady = run("w2w-sample", "--ckpt", model, "--space", space, "--num", "2", "--seeds", "2", "--text-temperature", "0")
    assert steady["text_temperature"] == 0 and sampled["text_temperature"] == 1
    edited = run("w2w-edit", "--ckpt", model, "--space", space, "--bank", str(out / "bank.safetensors"),
                 "--instance", "5", "--attribute", "aspect", "--amount", "0.3", "--t-inject", "0.2", "--seeds", "2")
    assert (out / "before.png").is_file() and (out / "after.png").is_file() and edited["instance"] == 5
    render_instance(sample_instances(1, seed=3)[0], IMAGE_SIZE, np.random.default_rng(0)).save(tmp_path / "img.png")
    inverted = run("w2w-invert", "--ckpt", model, "--space", space, "--image", str(tmp_path / "img.png"),
                   "--iters", "3", "--seeds", "2")
    assert len(inverted["losses"]) == 3 and (out / "coefficients.safetensors").is_file()


def test_w2w_verbs_refuse_bad_input_in_one_line(config16: ModelConfig, random_pipeline, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        crossflow_main(["edit", "w2w-pca", "--bank", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "bank file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        crossflow_main(["edit", "w2w-edit", "--ckpt", str(tmp_path), "--space", str(tmp_path / "s.safetensors"),
                        "--t-inject", "1.5", "--out", str(tmp_path)])
    assert "t_inject must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        crossflow_main(["edit", "w2w-sample", "--ckpt", str(tmp_path), "--space", str(tmp_path / "s.safetensors"),
                        "--text-temperature", "-1", "--out", str(tmp_path)])
    assert "--text-temperature must be a finite number >= 0 (the scale of the z_text draws' σ), got -1.0" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a NaN passes a plain `< 0` check and would sample NaN images
        crossflow_main(["edit", "w2w-sample", "--ckpt", str(tmp_path), "--space", str(tmp_path / "s.safetensors"),
                        "--temperature", "nan", "--out", str(tmp_path)])
    assert "--temperature must be a finite number >= 0 (the scale of the PC coefficients' std), got nan" \
        in capsys.readouterr().err
