"""Test helpers: a plain-PyTorch transcription of the official APViT forward, and official-format state_dicts.

The transcription is written from the specification (docs/models/apvit.md §2–§6), over the official checkpoint's key names
(``extractor.*``, ``vit.*``, ``head.fc.*``), the way the official code computes it: IR units as functional ops,
APP as an L1 score + ``topk(sorted=False)`` + sort + gather of (tokens + pos-embed), attention materialised as
B×H×N×N pre-softmax logits, the CLS row summed over heads, ``topk`` + sort + gather after the attention
residual and before the MLP. It shares no code with fastfer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PAPER = dict(units=(3, 4, 14), stem_stride=1, heads=8, patch_keep=160, keep_rates=(1.0,) * 4 + (0.9,) * 4, eps=1e-6)
TINY = dict(units=(1, 1), stem_stride=2, heads=4, patch_keep=96, keep_rates=(1.0, 1.0, 0.9, 0.9), eps=1e-6)

# APViT logit order → canonical index (docs/datasets.md §2): anger, disgust, fear, sad, happy, surprise, neutral, contempt.
APVIT_TO_CANONICAL = (6, 5, 4, 2, 1, 3, 0, 7)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                        training=False, eps=1e-5)


def _ir_trunk(sd, x, units, stem_stride):
    h = F.conv2d(x, sd["extractor.input_layer.0.weight"], stride=stem_stride, padding=1)
    h = F.prelu(_bn(h, sd, "extractor.input_layer.1."), sd["extractor.input_layer.2.weight"])
    for s, n in enumerate(units):
        for u in range(n):
            p = f"extractor.body.{s}.{u}."
            stride = 2 if u == 0 else 1
            r = _bn(h, sd, p + "res_layer.0.")
            r = F.conv2d(r, sd[p + "res_layer.1.weight"], padding=1)
            r = F.prelu(r, sd[p + "res_layer.2.weight"])
            r = F.conv2d(r, sd[p + "res_layer.3.weight"], stride=stride, padding=1)
            r = _bn(r, sd, p + "res_layer.4.")
            if p + "shortcut_layer.0.weight" in sd:
                sc = _bn(F.conv2d(h, sd[p + "shortcut_layer.0.weight"], stride=stride), sd, p + "shortcut_layer.1.")
            else:
                sc = F.max_pool2d(h, 1, stride)
            h = r + sc
    return h


def _gather(x, index):
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def official_forward(sd, x, cfg=PAPER):
    """Official APViT forward on an official-keyed state_dict. x (B, 3, 112, 112) → (logits in the head's row
    order, APP score map (B, gh, gw), APP kept positions (B, K), per-block kept token indices (B, M_i))."""
    f = _ir_trunk(sd, x, cfg["units"], cfg["stem_stride"])
    t = F.conv2d(f, sd["vit.projs.0.weight"], sd["vit.projs.0.bias"])  # B×C×gh×gw
    B, C = t.shape[:2]
    attn_map = torch.sum(torch.abs(t), dim=1)  # SUM_ABS_1 over the projected channels
    tokens = t.flatten(2).transpose(1, 2) + sd["vit.patch_pos_embed"]  # pos-embed added BEFORE selection
    app_index = torch.topk(attn_map.flatten(1), cfg["patch_keep"], dim=1, sorted=False).indices.sort(dim=1).values
    tokens = _gather(tokens, app_index)
    cls = sd["vit.cls_token"].expand(B, -1, -1) + sd["vit.cls_pos_embed"]
    x = torch.cat([cls, tokens], dim=1)
    heads = cfg["heads"]
    block_index = []
    for i, rate in enumerate(cfg["keep_rates"]):
        p = f"vit.blocks.{i}."
        B, N, C = x.shape
        D = C // heads
        h = F.layer_norm(x, (C,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], cfg["eps"])
        qkv = F.linear(h, sd[p + "attn.qkv.weight"]).reshape(B, N, 3, heads, D).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * D**-0.5  # B×H×N×N, pre-softmax
        cls_attn = attn[:, :, 0, :].sum(dim=1)  # CLS query row summed over heads → B×N
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, N, C)
        x = x + F.linear(out, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        keep = max(int((N - 1) * rate), 1)
        if keep < N - 1:  # always prune when fewer are kept (the official batch-size guard is not copied)
            kept = torch.topk(cls_attn[:, 1:], keep, dim=1, sorted=False).indices.sort(dim=1).values + 1
            index = torch.cat([torch.zeros(B, 1, dtype=torch.int64), kept], dim=1)
            x = _gather(x, index)
        else:
            index = torch.arange(N).expand(B, N)
        block_index.append(index)
        h = F.layer_norm(x, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], cfg["eps"])
        h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))  # exact (erf) GELU
        x = x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    x = F.layer_norm(x, (x.shape[-1],), sd["vit.norm.weight"], sd["vit.norm.bias"], cfg["eps"])
    logits = F.linear(x[:, 0], sd["head.fc.weight"], sd["head.fc.bias"])
    return logits, attn_map, app_index, block_index


def to_official(sd, head_order_from_canonical=True):
    """fastfer APViT state_dict → official key names (independent inverse of the converter's renames).
    The head rows are put back into APViT order (row i = canonical row APVIT_TO_CANONICAL[i])."""
    out = {}
    for key, value in sd.items():
        if key.startswith("extractor."):
            out[key] = value
        elif key.startswith("proj."):
            out["vit.projs.0." + key[len("proj."):]] = value
        elif key in ("cls_token", "cls_pos_embed", "patch_pos_embed") or key.startswith(("blocks.", "norm.")):
            out["vit." + key] = value
        elif key.startswith("head."):
            n = value.shape[0]
            rows = list(APVIT_TO_CANONICAL[:n]) if head_order_from_canonical else list(range(n))
            out["head.fc." + key[len("head."):]] = value[rows].clone()
        else:
            raise KeyError(key)
    return out


@torch.no_grad()
def randomize_(model, seed=0):
    """Give every parameter and BN statistic non-trivial random values (the head too: it starts at zero)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() == 1 and ("norm" in name or "res_layer.0" in name or "res_layer.4" in name
                             or "shortcut_layer.1" in name or "input_layer.1" in name):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen) if name.endswith("weight")
                    else 0.1 * torch.randn(p.shape, generator=gen))
        elif p.dim() == 1 and "prelu" not in name and name.endswith(".2.weight"):  # PReLU slopes
            p.copy_(0.25 + 0.05 * torch.randn(p.shape, generator=gen))
        else:
            fan_in = p[0].numel() if p.dim() > 1 else p.shape[-1]
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(max(fan_in, 1)))
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))
        elif name.endswith("running_var"):
            b.copy_(1 + 0.2 * torch.rand(b.shape, generator=gen))
    return model
