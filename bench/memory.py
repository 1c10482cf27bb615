"""Per-GPU training memory of the paper-scale model (configs/t2i_256px_xl.yaml) on 4 GPUs × 16 GiB with FSDP2.

Arithmetic, not a GPU measurement (this machine has none), built from three sources:

- **Parameter counts** from the real model: ``CrossFlowModel`` is built on the meta device from the model
  section of configs/t2i_256px_xl.yaml (nothing is allocated), and CLIP ViT-L/14's text tower from its
  ``transformers`` config, also on meta (no download).
- **Bytes per parameter** of each state under ``configs/trainer/fsdp2.yaml`` as ``crossflow.parallel`` shards
  it: one FSDP2 unit per transformer block, the VE / flow / alignment modules as roots that stay gathered
  from forward to backward, ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``.
- **Activation bytes per token** counted tensor by tensor from the block structure (``FLOW_BLOCK_KEPT``), and
  checked against the tensors autograd really saves for one block on the CPU (``saved_units``).

Run: python bench/memory.py   (a few seconds on a CPU; rewrites the 'memory' section of docs/results.md)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import table, update_section  # noqa: E402

import crossflow.models.layers as layers  # noqa: E402
from crossflow.config import ModelConfig  # noqa: E402
from crossflow.models.crossflow import CrossFlowModel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "t2i_256px_xl.yaml"
GIB = 2**30
WORLD = 4  # GPUs
CAPACITY_GIB = 16.0  # a "16 GB" card (V100 / T4 / A4000 class) has 16 GiB
# Not available to tensors: the CUDA context (~0.5 GiB), NCCL's buffers, allocator fragmentation.
MARGIN_GIB = 1.5
BATCHES = (1, 8, 32)
CLIP_L14_TEXT_PARAMS = 123_060_480  # openai/clip-vit-large-patch14 text tower; used if transformers is missing

# What autograd keeps per token for the backward pass of one flow block (AdaLNBlock), in units of one
# width-sized bf16 vector (n·d·2 bytes for the whole sequence). With flash / memory-efficient SDPA the
# n×n attention matrix is never stored (only a per-head log-sum-exp, negligible).
FLOW_BLOCK_KEPT: tuple[tuple[str, int], ...] = (
    ("block input (LayerNorm 1)", 1),
    ("LayerNorm 1 output, modulated output (qkv input)", 2),
    ("qkv output (v is a view of it)", 3),
    ("q and k after QK-RMSNorm", 2),
    ("attention output (the projection's input is a view of it)", 1),
    ("projection output (gated)", 1),
    ("residual after attention (LayerNorm 2 input)", 1),
    ("LayerNorm 2 output, modulated output (fc1 input)", 2),
    ("fc1 output (GELU input)", 4),
    ("GELU output (fc2 input)", 4),
    ("fc2 output (gated)", 1),
)
# The VE's EncoderBlock: pre-norm, no modulation and no gates: 22 − 4 (two modulations, two gated outputs).
VE_BLOCK_UNITS = sum(u for _, u in FLOW_BLOCK_KEPT) - 4
# bf16-mixed (the FSDP2 overlay's default) runs under autocast on top of FSDP2's bf16 parameters: CUDA
# autocast computes layer_norm in fp32, so each LayerNorm keeps an fp32 input and an fp32 output (+1 unit each).
AUTOCAST_EXTRA_UNITS = 4
# Gradients in flight while one block runs backward: the incoming gradient, the MLP hidden gradients
# (2 × 4 units) and the outgoing one. An estimate: autograd frees each as soon as it is consumed.
BACKWARD_WORKING_UNITS = 10


@dataclass(frozen=True)
class Params:
    """Parameter counts of the units FSDP2 gathers one at a time, and of the frozen text encoder."""

    ve_block: int
    ve_depth: int
    ve_root: int  # in_proj, positions, final norm, token_proj and the big output linear
    ve_out: int  # of which the output linear (slots·token_dim × 2·C·H·W)
    flow_block: int
    flow_depth: int
    flow_root: int  # patch embedding, indicator, time MLP, final layer
    alignment: int
    text_encoder: int

    @property
    def trainable(self) -> int:
        return self.ve_depth * self.ve_block + self.ve_root + self.flow_depth * self.flow_block + self.flow_root + self.alignment

    @property
    def roots(self) -> int:
        return self.ve_root + self.flow_root + self.alignment

    @property
    def largest_unit(self) -> int:
        return max(self.ve_block, self.ve_root, self.flow_block, self.flow_root, self.alignment)


def paper_model_config() -> tuple[ModelConfig, dict]:
    """The model section of configs/t2i_256px_xl.yaml as a ModelConfig, and the whole YAML."""
    raw = yaml.safe_load(CONFIG.read_text())
    return ModelConfig.from_dict(raw["model"]["model"]), raw


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def clip_text_params() -> int:
    """CLIP ViT-L/14's text tower (width 768, 12 layers, 77 positions, 49408 tokens), built on meta."""
    try:
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError:
        return CLIP_L14_TEXT_PARAMS
    config = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=77, projection_dim=768)
    with torch.device("meta"):
        return count(CLIPTextModel(config))


def count_params(config: ModelConfig, text_dim: int = 768) -> Params:
    """Parameter counts of the real model, built on the meta device."""
    with torch.device("meta"):
        model = CrossFlowModel(config, text_dim=text_dim)
    ve, flow = model.variational, model.flow
    ve_blocks, flow_blocks = count(ve.blocks), count(flow.blocks)
    return Params(
        ve_block=count(ve.blocks[0]), ve_depth=len(ve.blocks), ve_root=count(ve) - ve_blocks, ve_out=count(ve.out),
        flow_block=count(flow.blocks[0]), flow_depth=len(flow.blocks), flow_root=count(flow) - flow_blocks,
        alignment=count(model.alignment), text_encoder=clip_text_params(),
    )


class _FusedRMSNorm(torch.autograd.Function):
    """What CUDA's fused ``rms_norm`` keeps for backward: its input and the fp32 1/rms per row.

    The CPU build decomposes RMSNorm into fp32 element-wise ops that keep fp32 copies (+4 units per flow
    block); the GPU does not, so the CPU check swaps this in. Forward only: it is only used for counting.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return (x.float() * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> None:  # type: ignore[override]
        raise NotImplementedError("counting only")


def _gpu_like_rms_norms(module: nn.Module) -> None:
    for norm in module.modules():
        if isinstance(norm, nn.RMSNorm):
            eps = norm.eps if norm.eps is not None else torch.finfo(torch.bfloat16).eps
            norm.forward = lambda x, n=norm, e=eps: _FusedRMSNorm.apply(x, n.weight, e)  # type: ignore[method-assign]


def saved_units(block: nn.Module, run: Callable[[nn.Module], torch.Tensor], tokens: int, width: int) -> float:
    """Bytes autograd keeps for ``run(block)`` at batch 1 in bf16, in units of n·d·2 bytes.

    Counted by storage (q, k, v views of one qkv output count once), parameters excluded (FSDP2 holds the
    gathered weights anyway). SDPA's fused kernel is used, as on a GPU, not the math path the CPU would
    choose for bf16 training (layers._needs_math_kernel), which stores the n×n attention matrix.
    """
    block = block.to(torch.bfloat16)
    _gpu_like_rms_norms(block)
    params = {p.untyped_storage().data_ptr() for p in block.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    original = layers._needs_math_kernel
    layers._needs_math_kernel = lambda q: False
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run(block)
    finally:
        layers._needs_math_kernel = original
    return sum(kept.values()) / (tokens * width * 2)


def measured_block_units(config: ModelConfig) -> tuple[float, float]:
    """(flow block, VE block) saved bytes per token in units, measured on the CPU at the real widths."""
    torch.manual_seed(0)
    flow = config.transformer_config()
    n, d = flow.num_patches + 1, flow.width
    x = torch.randn(1, n, d, dtype=torch.bfloat16, requires_grad=True)
    c = torch.randn(1, d, dtype=torch.bfloat16, requires_grad=True)
    flow_units = saved_units(layers.AdaLNBlock(d, flow.num_heads, flow.mlp_ratio), lambda m: m(x, c), n, d)
    ve = config.variational
    length = config.text_encoder.max_length
    xv = torch.randn(1, length, ve.width, dtype=torch.bfloat16, requires_grad=True)
    mask = torch.ones(1, length, dtype=torch.bool)
    ve_units = saved_units(layers.EncoderBlock(ve.width, ve.num_heads), lambda m: m(xv, mask), length, ve.width)
    return flow_units, ve_units


@dataclass(frozen=True)
class Activations:
    """Activation bytes per sample, by part."""

    flow_kept: float  # what the flow blocks keep between forward and backward
    flow_recompute: float  # one block's full activations, rebuilt during its backward (checkpointing only)
    ve: float  # the VE's blocks (not checkpointed: 6 short blocks on 77 tokens)
    head: float  # final layer, embeddings, losses, alignment head
    working: float  # gradients in flight through one block

    @property
    def total(self) -> float:
        return self.flow_kept + self.flow_recompute + self.ve + self.head + self.working


def activations_per_sample(config: ModelConfig, checkpointing: bool, autocast: bool) -> Activations:
    """Activation bytes for one sample under bf16 compute, with or without per-block activation checkpointing."""
    flow = config.transformer_config()
    n, d = flow.num_patches + 1, flow.width
    unit = n * d * 2  # one width-sized bf16 vector per token
    extra = AUTOCAST_EXTRA_UNITS if autocast else 0
    block = (sum(u for _, u in FLOW_BLOCK_KEPT) + extra) * unit
    if checkpointing:  # each block keeps only its input; one block is recomputed at a time
        flow_kept, recompute = flow.depth * unit, block
    else:
        flow_kept, recompute = flow.depth * block, 0.0
    ve_cfg = config.variational
    ve = ve_cfg.depth * (VE_BLOCK_UNITS + extra) * config.text_encoder.max_length * ve_cfg.width * 2
    c, h, w = config.latent_shape
    # Final layer: LayerNorm input + output + modulated output (3 units); the rest is latent-sized (C·H·W
    # floats: x_t, z_text, targets, v_pred, in fp32) or smaller (alignment features, time embedding).
    head = 3 * unit + 8 * c * h * w * 4
    return Activations(flow_kept, recompute, ve, head, BACKWARD_WORKING_UNITS * unit)


def fsdp2_rows(p: Params, act: Activations, world: int) -> list[tuple[str, float, float]]:
    """(component, fixed bytes per GPU, bytes per sample per GPU) under FSDP2 over ``world`` GPUs."""
    n = p.trainable
    return [
        ("fp32 master weights, sharded (4 B/param ÷ GPUs)", 4 * n / world, 0.0),
        ("fp32 gradients, sharded (4 B/param ÷ GPUs; counted all step, conservatively)", 4 * n / world, 0.0),
        ("AdamW m and v, fp32, sharded (8 B/param ÷ GPUs)", 8 * n / world, 0.0),
        ("EMA weights, fp32, sharded (4 B/param ÷ GPUs)", 4 * n / world, 0.0),
        (f"roots gathered in bf16 from forward to backward ({p.roots / 1e6:.1f} M: VE root {p.ve_root / 1e6:.1f} M "
         f"of which the output linear {p.ve_out / 1e6:.1f} M, flow root {p.flow_root / 1e6:.1f} M, "
         f"alignment {p.alignment / 1e6:.1f} M)", 2 * p.roots, 0.0),
        # FSDP2 all-gathers into one flat buffer and copies out into the unsharded parameters: for a moment a
        # unit exists twice, next to the prefetched next one.
        (f"blocks gathered in bf16: current, its all-gather buffer, the prefetched next (3 × {p.flow_block / 1e6:.1f} M)",
         3 * 2 * p.flow_block, 0.0),
        ("unsharded gradients in backward: roots' bf16, one unit's bf16 + fp32 copy for the reduce-scatter",
         2 * p.roots + (2 + 4) * p.largest_unit, 0.0),
        (f"frozen CLIP ViT-L/14 text tower, bf16, replicated ({p.text_encoder / 1e6:.1f} M)", 2 * p.text_encoder, 0.0),
        ("activations: flow blocks (kept for backward)", 0.0, act.flow_kept),
        ("activations: one flow block recomputed in backward", 0.0, act.flow_recompute),
        ("activations: VE blocks (not checkpointed)", 0.0, act.ve),
        ("activations: final layer, losses, alignment head", 0.0, act.head),
        ("gradients in flight through one block", 0.0, act.working),
    ]


def replicated_rows(p: Params, act: Activations) -> list[tuple[str, float, float]]:
    """The same for DDP (every GPU holds everything); configs/trainer/ddp.yaml shares gradients with DDP's
    buckets (gradient_as_bucket_view), so there is no extra bucket copy."""
    n = p.trainable
    return [
        ("fp32 weights + gradients + AdamW m, v (16 B/param)", 16 * n, 0.0),
        ("EMA weights, fp32 (4 B/param)", 4 * n, 0.0),
        ("bf16 weight copies autocast keeps from forward to backward (2 B/param)", 2 * n, 0.0),
        ("frozen text tower, bf16", 2 * p.text_encoder, 0.0),
        ("activations", 0.0, act.total),
    ]


def optimizer_step_bytes(p: Params, world: int) -> float:
    """Peak of the optimizer step, after backward has freed activations and gathered weights: the sharded
    states (20 B/param) + foreach AdamW's temporary sqrt(v) (4 B/param), all ÷ GPUs, + the text tower."""
    return (20 + 4) * p.trainable / world + 2 * p.text_encoder


def fits(rows: list[tuple[str, float, float]], capacity_gib: float, margin_gib: float = MARGIN_GIB,
         step_bytes: float = 0.0) -> int:
    """The largest micro-batch whose forward/backward peak stays within capacity − margin (0: not even batch 1),
    provided the optimizer step's peak ``step_bytes`` does too."""
    fixed, per_sample = sum(r[1] for r in rows), sum(r[2] for r in rows)
    room = (capacity_gib - margin_gib) * GIB - fixed
    if step_bytes > (capacity_gib - margin_gib) * GIB or per_sample <= 0:
        return 0
    return max(0, math.floor(room / per_sample))


def total_gib(rows: list[tuple[str, float, float]], batch: int, step_bytes: float = 0.0) -> float:
    """Peak per GPU: the larger of the forward/backward peak and the optimizer step's."""
    return max(step_bytes, sum(fixed + batch * per for _, fixed, per in rows)) / GIB


def gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def mib(x: float) -> str:
    return f"{x / 2**20:.1f}"


def main() -> None:
    config, raw = paper_model_config()
    p = count_params(config)
    flow = config.transformer_config()
    n_tokens, width = flow.num_patches + 1, flow.width
    unit = n_tokens * width * 2
    flow_units = sum(u for _, u in FLOW_BLOCK_KEPT)
    measured_flow, measured_ve = measured_block_units(config)

    ac = activations_per_sample(config, checkpointing=True, autocast=True)
    no_ac = activations_per_sample(config, checkpointing=False, autocast=True)
    rows_ac, rows_no = fsdp2_rows(p, ac, WORLD), fsdp2_rows(p, no_ac, WORLD)
    budget = CAPACITY_GIB - MARGIN_GIB

    step = optimizer_step_bytes(p, WORLD)
    header = ["component", *(f"b = {b}, AC (GiB)" for b in BATCHES), *(f"b = {b}, no AC (GiB)" for b in BATCHES)]
    body_rows = []
    for (name, fixed, per), (_, _, per_no) in zip(rows_ac, rows_no, strict=True):
        body_rows.append([name, *(gib(fixed + b * per) for b in BATCHES), *(gib(fixed + b * per_no) for b in BATCHES)])
    body_rows.append(["optimizer step (activations freed): the states + foreach AdamW's temporary (4 B/param ÷ GPUs)",
                      *[gib(step)] * (2 * len(BATCHES))])
    body_rows.append([f"**peak** = the larger of the two (budget {CAPACITY_GIB:.0f} GiB − {MARGIN_GIB} GiB margin "
                      f"= {budget:.1f} GiB)",
                      *(f"**{total_gib(rows_ac, b, step):.2f}**" for b in BATCHES),
                      *(f"**{total_gib(rows_no, b, step):.2f}**" for b in BATCHES)])
    b_ac, b_no = fits(rows_ac, CAPACITY_GIB, step_bytes=step), fits(rows_no, CAPACITY_GIB, step_bytes=step)
    b_ac_true = fits(fsdp2_rows(p, activations_per_sample(config, True, autocast=False), WORLD), CAPACITY_GIB,
                     step_bytes=step)
    b_no_true = fits(fsdp2_rows(p, activations_per_sample(config, False, autocast=False), WORLD), CAPACITY_GIB,
                     step_bytes=step)
    global_batch = raw["data"]["batch_size"] * raw["trainer"]["devices"] * raw["trainer"]["num_nodes"]
    micro = 2 ** int(math.log2(b_ac))  # a power of two that divides the global batch
    accumulate = math.ceil(global_batch / (WORLD * micro))

    rep_ac, rep_no = replicated_rows(p, ac), replicated_rows(p, no_ac)
    rep_step = (20 + 4) * p.trainable + 2 * p.text_encoder
    per_gpu_batch = raw["data"]["batch_size"]

    breakdown = ", ".join(f"{name} {u}" for name, u in FLOW_BLOCK_KEPT)
    text = f"""
The paper-scale model (configs/t2i_256px_xl.yaml: xl flow transformer, VE width 1024 × 6 layers on 77 CLIP
tokens, 4×32×32 latents, patch 2) trained with `--trainer configs/trainer/fsdp2.yaml` (bf16-mixed) on
**{WORLD} GPUs × {CAPACITY_GIB:.0f} GiB**, with and without `--model.activation_checkpointing true` (AC), per
micro-batch b per GPU. Arithmetic from the real parameter counts (models built on the meta device) and a
tensor-by-tensor count of what autograd keeps; not a GPU measurement.

Trainable parameters: **{p.trainable / 1e9:.3f} B** (flow {(p.flow_depth * p.flow_block + p.flow_root) / 1e6:.1f} M,
VE {(p.ve_depth * p.ve_block + p.ve_root) / 1e6:.1f} M, alignment {p.alignment / 1e6:.1f} M); frozen text tower
{p.text_encoder / 1e6:.1f} M. FSDP2 units: {p.flow_depth} flow blocks of {p.flow_block / 1e6:.1f} M,
{p.ve_depth} VE blocks of {p.ve_block / 1e6:.1f} M, and the roots. The largest unit is the **VE root**
({p.ve_root / 1e6:.1f} M, almost all of it the {p.ve_out / 1e6:.1f} M output linear 77·64 → 2·4·32·32), larger
than a flow block, but in bf16 it is only {gib(2 * p.ve_root)} GiB: no unit dominates; the sharded fp32 states do.

{table(header, body_rows)}

**Largest micro-batch in {CAPACITY_GIB:.0f} GiB ({MARGIN_GIB} GiB kept for the CUDA context, NCCL and
fragmentation): {b_ac} per GPU with activation checkpointing, {b_no} without** (bf16-true instead of bf16-mixed:
{b_ac_true} and {b_no_true}). The global batch of the recipe ({global_batch}) on {WORLD} such GPUs: micro-batch
{micro} × {WORLD} GPUs × `--trainer.accumulate_grad_batches {accumulate}`. At small micro-batches the
optimizer step ({gib(step)} GiB) is the peak: the sharded states are most of the memory.

How the activations are counted. One unit = one width-sized bf16 vector per token = n·d·2 bytes =
{mib(unit)} MiB per sample (n = {n_tokens} tokens, d = {width}). Per flow block autograd keeps {flow_units} units:
{breakdown} (+{AUTOCAST_EXTRA_UNITS} under bf16-mixed: CUDA autocast runs LayerNorm in fp32 and keeps its fp32
input and output); flash / memory-efficient SDPA keeps no n×n matrix. Checked on the CPU by recording what
autograd saves for one real block at batch 1 in bf16 (fused SDPA, GPU-style RMSNorm): {measured_flow:.2f} units
per flow block (counted {flow_units}) and {measured_ve:.2f} per VE block (counted {VE_BLOCK_UNITS}; the rest is
normalisation statistics). With AC a flow block keeps only its input (1 unit) and one block's
{flow_units + AUTOCAST_EXTRA_UNITS} units are rebuilt at a time in backward; {BACKWARD_WORKING_UNITS} units of
gradients in flight are added either way. Per sample: **{mib(ac.total)} MiB with AC** (the un-checkpointed VE
is {mib(ac.ve)} of it), **{mib(no_ac.total)} MiB without**. Not counted: the codec (precomputed latents, or a
frozen no-grad encoder whose buffers are freed before the flow transformer's activations build up) and the text
tower's no-grad forward (same reason).

**Replicated (DDP) for comparison**, same activations (slightly more in fact: without FSDP2's input cast the
residual stream stays fp32): weights, gradients and AdamW state 16 B/param, + EMA
4 B, + autocast's bf16 weight copies 2 B = 22 B/param × {p.trainable / 1e9:.3f} B = {gib(22 * p.trainable)} GiB
before any activation ({gib(16 * p.trainable)} GiB without EMA and autocast copies). It cannot train on a
{CAPACITY_GIB:.0f} GiB GPU at all (peak at b = 1: {total_gib(rep_ac, 1, rep_step):.1f} GiB, in the optimizer step). On 32 GiB GPUs it fits
b ≤ {fits(rep_ac, 32, step_bytes=rep_step)} with AC and b ≤ {fits(rep_no, 32, step_bytes=rep_step)} without; on 80 GiB b ≤ {fits(rep_ac, 80, step_bytes=rep_step)} with AC,
b ≤ {fits(rep_no, 80, step_bytes=rep_step)} without. The recipe's {per_gpu_batch} per GPU without AC would need
{total_gib(rep_no, per_gpu_batch):.0f} GiB replicated and {total_gib(rows_no, per_gpu_batch):.0f} GiB under FSDP2
on 4 GPUs: at that batch, activations, not weights, are the memory, and checkpointing (or accumulation) is
what makes it fit.
"""
    update_section("memory", f"Memory per GPU: xl on {WORLD} × {CAPACITY_GIB:.0f} GiB with FSDP2",
                   "python bench/memory.py", text)
    print(f"b=1 peak with AC {total_gib(rows_ac, 1, step):.2f} GiB, without {total_gib(rows_no, 1, step):.2f} GiB; "
          f"max micro-batch {b_ac} (AC) / {b_no} (no AC); measured units flow {measured_flow:.2f} ve {measured_ve:.2f}")


if __name__ == "__main__":
    main()
