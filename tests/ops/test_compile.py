"""The ops under torch.compile(fullgraph=True) and torch.export, inside a small pooled block."""
import pytest
import torch
from torch import nn

import fastfer


class TinyPooledNet(nn.Module):
    """Conv map → APP (top-k positions + pos) → CLS → one attention block with ATP → MLP → head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.pos = nn.Parameter(torch.randn(16, 32) * 0.1)
        self.cls = nn.Parameter(torch.zeros(1, 1, 32))
        self.qkv = nn.Linear(32, 96, bias=False)
        self.proj = nn.Linear(32, 32)
        self.norm = nn.LayerNorm(32)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, img):
        tokens = fastfer.patch_pool(self.conv(img), 12, pos=self.pos).tokens
        x = torch.cat([self.cls.expand(img.shape[0], -1, -1), tokens], dim=1)  # (B, 13, 32)
        qkv = self.qkv(self.norm(x)).reshape(x.shape[0], 13, 3, 4, 8)
        out, index, _ = fastfer.token_pool_attention(qkv, 9)
        x = x.gather(1, index[..., None].expand(-1, -1, 32)) + self.proj(out)
        x = x + self.mlp(x)
        return self.head(x[:, 0])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_compile_fullgraph_forward_backward_matches_eager(backend, device):
    torch.manual_seed(0)
    net = TinyPooledNet().to(device)
    img = torch.randn(3, 3, 8, 8, device=device)
    with fastfer.use_backend(backend):  # pinned around the compiled call, as the docs say
        eager = net(img)
        eager.sum().backward()
        grads = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        compiled = torch.compile(net, fullgraph=True, backend="aot_eager" if backend == "torch" else "inductor")
        out = compiled(img)
        out.sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    for g, p in zip(grads, net.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_torch_export_runs_and_matches():
    torch.manual_seed(1)
    net = TinyPooledNet().eval()
    img = torch.randn(2, 3, 8, 8)
    with fastfer.use_backend("torch"):
        program = torch.export.export(net, (img,))
    assert any("fastfer.token_pool_attention" in str(n.target) for n in program.graph.nodes)
    torch.testing.assert_close(program.module()(img), net(img))
