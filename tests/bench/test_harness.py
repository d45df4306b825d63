"""The benchmark harness itself: baselines agree with the reference, the checks catch wrong results, the
cost model matches docs/kernels.md §9, the model runner works on a toy model, the floor is measured."""
import pytest
import torch
from torch import nn

from bench import _baselines, _cases
from bench._checks import check_attention, check_patch, check_selection
from bench._models import NotApplicable, Provider, build_runner, logits_of
from bench._roofline import HardwareFloor, attention_cost, patch_cost, roofline


@pytest.mark.parametrize("shape", _cases.SMOKE_ATTENTION, ids=lambda s: s.name)
@pytest.mark.parametrize("baseline", [_baselines.atp_eager, _baselines.atp_sdpa], ids=["eager", "sdpa"])
def test_attention_baselines_match_reference(shape, baseline):
    torch.manual_seed(0)
    qkv = torch.randn(3, shape.N, 3, shape.H, shape.D, requires_grad=True)
    scale = shape.D**-0.5
    out, index, scores = baseline(qkv, shape.keep, scale, shape.score)
    assert out.shape == (3, shape.M, shape.H * shape.D) and scores.shape == (3, shape.N)
    grad_out = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, grad_out)
    check_attention(qkv.detach(), shape.keep, scale, shape.score, out.detach(), index, grad_out, grad)


def test_patch_baseline_matches_reference():
    torch.manual_seed(0)
    s = _cases.SMOKE_PATCH[0]
    x = torch.randn(3, s.C, s.side, s.side, requires_grad=True)
    pos = torch.randn(s.N, s.C, requires_grad=True)
    tokens, index, _ = _baselines.app_eager(x, s.k, pos)
    grad_tokens = torch.randn_like(tokens)
    grads = torch.autograd.grad(tokens, (x, pos), grad_tokens)
    check_patch(x.detach(), s.k, pos.detach(), tokens.detach(), index, grad_tokens, grads)
    with pytest.raises(ValueError, match="score: the eager APP baseline implements APViT's 'l1' only"):
        _baselines.app_eager(x, s.k, pos, score="l2")


def test_checks_reject_wrong_results():
    scores = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0]])
    check_selection(torch.tensor([[1, 3]]), scores, 2, torch.float32)
    with pytest.raises(AssertionError, match="dropped position outscores"):
        check_selection(torch.tensor([[1, 2]]), scores, 2, torch.float32)
    with pytest.raises(AssertionError, match="not strictly ascending"):
        check_selection(torch.tensor([[3, 1]]), scores, 2, torch.float32)
    qkv = torch.randn(2, 9, 3, 2, 8)
    out, index, _ = _baselines.atp_eager(qkv, 5, 8**-0.5)
    with pytest.raises(AssertionError, match="out"):
        check_attention(qkv, 5, 8**-0.5, "logit_sum", out.flip(1), index)


def test_attention_cost_matches_spec_roofline_table():
    # docs/kernels.md §9: APViT blocks 0-4 (N=161, 8×96, B=128, bf16, no pooling): 10.19 GFLOP, 126.6 MB
    # of Q, K, V, O; our count adds the CLS row, the scores and the index.
    cost = attention_cost(_cases.AttentionShape("b0", 161, 8, 96, None), 128, torch.bfloat16, "fwd")
    assert cost.flops == pytest.approx(10.19e9, rel=5e-3)
    assert cost.bytes == pytest.approx(126.6e6, rel=5e-3)
    both = attention_cost(_cases.AttentionShape("b0", 161, 8, 96, None), 128, torch.bfloat16, "fwdbwd")
    assert both.flops == pytest.approx(3.5 * 10.19e9, rel=5e-3)  # backward = 2.5× forward attention
    # APP (B=128, bf16): read the 768×196 map (38.5 MB) + write 160×768 tokens (31.5 MB) ≈ 70 MB.
    app = patch_cost(_cases.MODEL_PATCH[0], 128, torch.bfloat16, "fwd")
    assert app.bytes == pytest.approx(70e6, rel=0.01)


def test_roofline_names_the_binding_term():
    cost = attention_cost(_cases.AttentionShape("b0", 161, 8, 96, None), 128, torch.bfloat16, "fwd")
    r = roofline(cost, seconds=100e-6, copy_gbps=3000.0, gemm_tflops=800.0)
    assert r["bound"] == "memory"  # 42 µs of traffic vs 12.8 µs of math
    assert r["floor_fraction"] == pytest.approx(cost.bytes / 3000e9 / 100e-6)
    assert r["gbps"] == pytest.approx(cost.bytes / 100e-6 / 1e9)
    assert roofline(cost, 100e-6, copy_gbps=3e6, gemm_tflops=800.0)["bound"] == "compute"


def test_hardware_floor_measures_cpu():
    floor = HardwareFloor(torch.device("cpu"), small=True)
    assert floor.copy_gbps > 0.01
    assert floor.gemm_tflops(torch.float32) > 1e-4
    info = floor.as_dict()
    assert info["copy_buffer_mib"] == 8 and "float32" in info["gemm_tflops"]


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 7)

    def forward(self, x):
        return self.head(self.body(x)), x.mean()  # a tuple, logits first (like FER-former's official code)


@pytest.mark.parametrize("provider", ["torch-fp32", "torch-amp", "torch-amp-compile"])
@pytest.mark.parametrize("task", ["train", "infer"])
def test_model_runner_on_a_toy_model(provider, task):
    torch.manual_seed(0)
    model = ToyNet()
    before = model.head.weight.detach().clone()
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 5])
    runner = build_runner(model, task, Provider.parse(provider), images, labels, compile_backend="aot_eager")
    runner.fn()
    runner.check()
    changed = not torch.equal(before, model.head.weight)
    assert changed == (task == "train")  # a train step updates the weights, inference does not
    assert model.training == (task == "train")


def test_model_runner_rejects_what_cannot_run():
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([1, 5])
    with pytest.raises(NotApplicable, match="CUDA graphs"):
        build_runner(ToyNet(), "infer", Provider.parse("torch-amp-graphs"), images, labels)
    with pytest.raises(ValueError, match="task: expected 'train' or 'infer', got 'eval'"):
        build_runner(ToyNet(), "eval", Provider.parse("torch-fp32"), images, labels)
    with pytest.raises(ValueError, match="provider: expected one of"):
        Provider.parse("fused-fp64")
    assert logits_of({"logits": images}) is images and logits_of((images, 1)) is images
