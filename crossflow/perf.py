"""Training-performance arithmetic: analytic FLOPs of the flow transformer, GPU peak FLOP/s, MFU, peak memory.

Pure functions (no Lightning): the ``Throughput`` callback and ``bench/model_sizes.py`` use them.

**What is counted.** :func:`forward_flops_per_sample` is the FLOPs of one forward pass of the *flow
transformer* for one sample: every matrix multiply counted as 2·m·n·k (one multiply-add = 2 FLOPs,
Kaplan et al. 2020), over the patch embedding, every block (qkv, attention QKᵀ and A·V, output projection,
MLP, the per-sample adaLN modulation) and the final layer, plus the timestep MLP; the sequence is the image
patches + the CFG indicator token. Element-wise work (norms, activations, softmax, biases, residuals) is left
out, as in Kaplan et al. / PaLM: it is O(width) per token against O(width²) for the matmuls. This is
exactly what ``torch.utils.flop_counter.FlopCounterMode`` counts (tests/test_perf.py checks they agree).

Not counted: the Variational Encoder, the contrastive alignment head, the frozen text encoder and the codec.
The issue asks for the MFU "of our transformer", and the flow transformer dominates at scale: at paper scale
(configs/t2i_256px_xl.yaml) the VE and alignment head add 3.6% to the flow transformer's forward FLOPs
(12.0 vs 334.9 GFLOPs: 6 layers on 77 text tokens vs 32 on 257 image tokens), so the MFU reported slightly
underestimates the hardware's real utilisation; on the CPU demo model they add 47%, a large underestimate.

**Training FLOPs** (:func:`train_flops_per_sample`) = 3 × forward: the backward pass costs twice the forward
(gradients w.r.t. activations and w.r.t. weights; Kaplan et al. 2020, PaLM appendix B). Recomputation by
activation checkpointing is *not* counted, as in PaLM's model FLOPs utilisation (hardware FLOPs
utilisation would count it).

**Tokens** (:func:`flow_tokens_per_sample`, for tokens/s) are the flow transformer's sequence length, patches
+ the indicator token: the length its FLOPs scale with.

**MFU** = achieved training FLOP/s per device / peak FLOP/s per device, where achieved = (samples/s on this
device) × training FLOPs per sample. The peak is the vendor's *dense* (no 2:4 sparsity) bf16 tensor-core
number (fp16 on V100, which has no bf16), whatever precision the run trains in: the convention is "fraction
of the best the hardware can do", so an fp32 run reports a low MFU.

**Peak table** (:data:`PEAK_FLOPS`), matched against ``torch.cuda.get_device_name()``; dense TFLOP/s from
the NVIDIA datasheets, which print the sparse figure (2×) with a footnote:

=====================  ==========  =========================================================
GPU                    TFLOP/s     source (datasheet figure with sparsity → dense)
=====================  ==========  =========================================================
B200 (HGX)             2250        HGX B200: 36 PFLOPS / 8 GPUs = 4.5 sparse
H100 SXM               989         H100 datasheet: 1979 sparse
H100 NVL               835         H100 datasheet: 1671 sparse
H100 PCIe              756         H100 datasheet (2022, PCIe column): 1513 sparse
H200 SXM               989         H200 datasheet: 1979 sparse
H200 NVL               835         H200 datasheet: 1671 sparse
A100 (SXM and PCIe)    312         A100 datasheet: 624 sparse
A10                    125         A10 datasheet: 250 sparse
L40S                   362         L40S datasheet: 362.05 dense / 733 sparse
L40                    181         L40 datasheet: 181.05 dense / 362.1 sparse
L4                     121         L4 datasheet: 242 sparse
RTX 4090               165         Ada whitepaper: 165.2 dense, fp32 accumulate
V100 SXM2              125         V100 datasheet, fp16 tensor (no bf16, no sparsity)
V100 PCIe              112         V100 datasheet, fp16 tensor
V100S PCIe             130         V100S datasheet, fp16 tensor
=====================  ==========  =========================================================

Left out rather than guessed: A10G (the AWS part; published figures disagree), GH200 / GB200, consumer and
workstation cards other than the RTX 4090, non-NVIDIA accelerators. Unknown devices and CPUs give ``None``
(no MFU); pass the peak yourself with ``Throughput(peak_flops=...)``.
"""

from __future__ import annotations

import re
import sys

import torch

from crossflow.models.transformer import FlowTransformerConfig

# (pattern searched case-insensitively in the CUDA device name, dense bf16 FLOP/s). First match wins, so a
# variant (PCIe, NVL) comes before its family. \b keeps "A10" off "A100"/"A10G" and "H200" off "GH200".
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    (r"\bB200\b", 2250e12),
    (r"\bH100\b.*\bNVL\b", 835e12),
    (r"\bH100\b.*\bPCIe\b", 756e12),
    (r"\bH100\b", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"\bH200\b.*\bNVL\b", 835e12),
    (r"\bH200\b", 989e12),
    (r"\bA100\b", 312e12),  # "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe": same tensor peak
    (r"\bA10\b", 125e12),
    (r"\bL40S\b", 362e12),
    (r"\bL40\b", 181e12),
    (r"\bL4\b", 121e12),
    (r"\bRTX 4090$", 165e12),  # anchored: not the "4090 D" or the laptop part, which are slower
    (r"\bV100S\b", 130e12),
    (r"\bV100\b.*\bPCIE\b", 112e12),
    (r"\bV100\b", 125e12),  # SXM2 / SXM3
)


def flow_tokens_per_sample(cfg: FlowTransformerConfig) -> int:
    """Sequence length of the flow transformer: the image patches + the CFG indicator token."""
    return cfg.num_patches + 1


def forward_flops_per_sample(cfg: FlowTransformerConfig) -> int:
    """Matmul FLOPs (2 per multiply-add) of one flow-transformer forward pass of one sample (module doc)."""
    patches, n = cfg.num_patches, flow_tokens_per_sample(cfg)
    d, hidden, patch_dim = cfg.width, int(cfg.width * cfg.mlp_ratio), cfg.in_channels * cfg.patch_size**2
    freq_dim = 256  # TimestepEmbedder's sinusoidal feature size
    per_token = 3 * d * d + d * d + 2 * d * hidden  # qkv, output projection, MLP (fc1 + fc2)
    attention = 2 * n * n * d  # QKᵀ and A·V, n·n·d multiply-adds each
    block = 2 * (n * per_token + attention + d * 6 * d)  # + adaLN modulation, once per sample
    embed = 2 * patches * patch_dim * d  # the indicator token is an embedding lookup: no FLOPs
    final = 2 * (d * 2 * d + patches * d * patch_dim)  # adaLN modulation + linear to patch values
    time = 2 * (freq_dim * d + d * d)
    return cfg.depth * block + embed + final + time


def train_flops_per_sample(cfg: FlowTransformerConfig) -> int:
    """Forward + backward FLOPs of one sample: 3 × forward (no activation-checkpointing recomputation)."""
    return 3 * forward_flops_per_sample(cfg)


def peak_flops_for_name(name: str) -> float | None:
    """Dense bf16 tensor-core peak FLOP/s of a GPU from its CUDA device name; None when not in the table."""
    for pattern, flops in PEAK_FLOPS:
        if re.search(pattern, name.strip(), re.IGNORECASE):
            return flops
    return None


def peak_flops_per_s(device: torch.device) -> float | None:
    """Peak FLOP/s of ``device`` (see :data:`PEAK_FLOPS`); None for CPUs and unknown GPUs."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return peak_flops_for_name(torch.cuda.get_device_name(device))


def mfu(samples_per_s_per_device: float, train_flops: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s of one device over its peak."""
    return samples_per_s_per_device * train_flops / peak_flops


def peak_memory_gib(device: torch.device) -> tuple[str, float] | None:
    """(metric name, GiB): CUDA's peak allocated memory on a GPU; elsewhere the process's peak RSS (None on
    Windows, which has no ``resource`` module).

    Both are peaks since the process started (or CUDA's last ``reset_peak_memory_stats``), so they include
    validation and sampling. Peak RSS is a different quantity (everything the process touched, data loading
    included), hence its own name.
    """
    if device.type == "cuda":
        return "peak_memory_gb", torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource  # Unix only
    except ImportError:
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return "peak_rss_gb", rss / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB on Linux
