"""Model-level benchmark runners: one train step or one inference batch under a provider's settings.

Providers (what the official-style baseline and the fastfer paths are):

=====================  ========  ===========  =========  ============
provider               backend   autocast     compile    CUDA graph
=====================  ========  ===========  =========  ============
torch-fp32             torch     –            –          –   (the official-style baseline)
fused-fp32             fused     –            –          –
fused-fp32-cl          fused     –            –          –   channels_last model and input
fused-amp-cl           fused     bf16         –          –   channels_last model and input
torch-amp              torch     bf16         –          –
torch-amp-compile      torch     bf16         yes        –
torch-amp-graphs       torch     bf16         –          inference, CUDA only
fused-amp              fused     bf16         –          –
fused-amp-compile      fused     bf16         yes        –
fused-amp-graphs       fused     bf16         –          inference, CUDA only
=====================  ========  ===========  =========  ============

``fused`` is the backend fastfer's chooser picks for the device (triton or cuda on a GPU, the C++ cpu
backend, built on first need); the providers are skipped where it would be the torch reference. AMP uses bf16
on both CUDA and CPU (no GradScaler needed); on a CPU without native bf16 (no AMX-BF16 / AVX512-BF16) bf16 is
emulated and slower than fp32, which is why fastfer's ``amp="auto"`` runs fp32 there: ``fused-fp32-cl`` is
then what ``fastfer train`` / ``predict`` run, ``fused-amp-cl`` where the CPU has native bf16.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

PROVIDERS = (
    "torch-fp32",
    "fused-fp32",
    "fused-fp32-cl",
    "fused-amp-cl",
    "torch-amp",
    "torch-amp-compile",
    "torch-amp-graphs",
    "fused-amp",
    "fused-amp-compile",
    "fused-amp-graphs",
)
AMP_DTYPE = torch.bfloat16


class NotApplicable(Exception):
    """The provider cannot run this case here (the message says why); the benchmark is skipped."""


@dataclass(frozen=True)
class Provider:
    name: str
    fused: bool
    amp: bool
    compile: bool
    graphs: bool
    channels_last: bool = False

    @classmethod
    def parse(cls, name: str) -> "Provider":
        if name not in PROVIDERS:
            raise ValueError(f"provider: expected one of {PROVIDERS}, got {name!r}")
        return cls(name, name.startswith("fused"), "amp" in name, name.endswith("compile"), name.endswith("graphs"),
                   name.endswith("-cl"))


def fused_backend(device: torch.device) -> str:
    """The backend fastfer picks automatically for an AMP attention call on device, or NotApplicable."""
    from fastfer.ops.backends import registry as _backends

    call = _backends.Call("token_pool_attention", device, AMP_DTYPE, head_dim=96)
    name = _backends.select(call).name
    if name == "torch":
        raise NotApplicable(
            f"no fused fastfer backend runs on {device.type} (the chooser picks the torch reference; "
            "the Triton interpreter is not a speed path)"
        )
    return name


def logits_of(output) -> torch.Tensor:
    """A model's logits whether it returns a tensor, a tuple (logits first) or a dict with 'logits'."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    return output[0]


def _autocast(device: torch.device, enabled: bool, cache: bool = True):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPE, cache_enabled=cache)


@dataclass
class Runner:
    """A prepared case: ``fn()`` runs one step; ``check()`` asserts the last result is sane."""

    fn: Callable[[], object]
    check: Callable[[], None]
    info: dict = field(default_factory=dict)


def build_runner(model: torch.nn.Module, task: str, provider: Provider, images: torch.Tensor, labels: torch.Tensor,
                 compile_backend: str = "inductor") -> Runner:
    """model (already built with the provider's backend, on images.device); images (B, 3, H, W); labels (B,).

    ``train``: forward, cross-entropy, backward, AdamW step, zero_grad. ``infer``: eval-mode forward under
    no_grad. Raises NotApplicable for CUDA graphs off-GPU or in training.
    """
    device = images.device
    if task not in ("train", "infer"):
        raise ValueError(f"task: expected 'train' or 'infer', got {task!r}")
    if provider.graphs and (task != "infer" or device.type != "cuda"):
        raise NotApplicable("CUDA graphs are benchmarked for inference on a CUDA device only")
    model.train(task == "train")
    if provider.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    net = model
    if provider.compile:
        torch._dynamo.reset()
        net = torch.compile(model, backend=compile_backend)
    last: dict = {}

    if task == "train":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step():
            with _autocast(device, provider.amp):
                logits = logits_of(net(images))
                loss = F.cross_entropy(logits.float(), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            last["logits"], last["loss"] = logits, loss
            return loss

        def check():
            assert last["logits"].shape[0] == images.shape[0], f"logits: batch {tuple(last['logits'].shape)}"
            assert torch.isfinite(last["loss"]).item(), f"loss is not finite: {last['loss'].item()}"

        return Runner(step, check)

    def forward():
        with torch.no_grad(), _autocast(device, provider.amp, cache=not provider.graphs):
            last["logits"] = logits_of(net(images))
        return last["logits"]

    fn = forward
    if provider.graphs:
        fn = _capture(forward, device)

    def check():
        logits = last["logits"]
        assert logits.shape[0] == images.shape[0], f"logits: batch {tuple(logits.shape)}"
        assert bool(torch.isfinite(logits.float()).all()), "logits are not finite"

    return Runner(fn, check)


def _capture(forward: Callable[[], torch.Tensor], device: torch.device) -> Callable[[], None]:
    """Capture forward (static input and output buffers) into a CUDA graph; returns graph.replay."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs requires
            forward()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    return graph.replay


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak allocated CUDA memory (MiB) over one call of fn (weights and optimizer state included)."""
    if device.type != "cuda":
        return None  # the CPU allocator keeps no peak statistics
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20
