"""A plain-PyTorch transcription of the released FER-former forward pass (docs/models/ferformer.md §1–§7), on the official
state_dict layout (§11), written independently of fastfer's modules: the oracle for the converter and for the
fused model. Also builds that layout from a FerFormer state_dict (``to_official``), dead weight included."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastfer.labels import EXPRESSIONS, NATIVE_ORDERS, order_map

OFFICIAL_LABELS = NATIVE_ORDERS["fer_former"]
STAGE_UNITS = (3, 4, 14, 3)
TOKEN_OF_PATCH = {2: 1, 4: 3, 6: 4, 12: 5}


def to_official(sd: dict, num_stages: int = 3, labels=EXPRESSIONS[:7]) -> dict:
    """FerFormer state_dict → the released ModelClassifier state_dict (head rows in RAF-DB order), plus the
    released dead weight (stage-4 units, output layer, token2, fc1, pos_embed, torchextractor duplicates) as
    small random tensors whose names the converter must drop."""
    g = torch.Generator().manual_seed(7)
    out = {}
    flat_start = [sum(STAGE_UNITS[:s]) for s in range(4)]
    for key, value in sd.items():
        if key.startswith("backbone.body."):
            s, u, rest = key[len("backbone.body."):].split(".", 2)
            out[f"backbone.body.{flat_start[int(s)] + int(u)}.{rest}"] = value
        elif key.startswith("backbone."):
            out[key] = value
        elif key.startswith("patch_embed.p"):
            p, rest = key[len("patch_embed.p"):].split(".", 1)
            out[f"token{TOKEN_OF_PATCH[int(p)]}.1.{rest}"] = value
        elif key.startswith("token_norm."):
            out["vit.norm." + key[len("token_norm."):]] = value
        elif key in ("cls_token", "clip_token") or key.startswith("blocks."):
            out["vit." + key] = value
        elif key.startswith("text_proj."):
            out["fc2." + key[len("text_proj."):]] = value
        elif key.startswith("head."):
            to_canon = order_map(OFFICIAL_LABELS, labels)  # native row i holds canonical row to_canon[i]
            out["vit.head.0." + key[len("head."):]] = value[list(to_canon)]
    dead = {"token2.1.weight": (4, 9), "token2.1.bias": (4,), "fc1.weight": (4, 8), "fc1.bias": (4,),
            "vit.pos_embed": (1, 52, 4), "backbone.output_layer.0.weight": (8,), "backbone.output_layer.3.weight": (4, 8),
            "backbone.output_layer.4.running_mean": (4,)}
    for flat in range(flat_start[num_stages], sum(STAGE_UNITS)):
        dead[f"backbone.body.{flat}.res_layer.1.weight"] = (2, 2, 3, 3)
    for key, shape in dead.items():
        out[key] = torch.randn(shape, generator=g)
    for key in [k for k in out if k.startswith("backbone.")]:
        out["model.model." + key[len("backbone."):]] = out[key]  # torchextractor wraps the same backbone
    return out


def _bn(x, sd, prefix, eps=1e-5):
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], False, 0.0, eps)


def _ir50(sd, x, num_stages):
    x = F.conv2d(x, sd["backbone.input_layer.0.weight"], padding=1)
    x = F.prelu(_bn(x, sd, "backbone.input_layer.1."), sd["backbone.input_layer.2.weight"])
    flat = 0
    for stage in range(num_stages):
        for unit in range(STAGE_UNITS[stage]):
            p = f"backbone.body.{flat}."
            stride = 2 if unit == 0 else 1
            r = _bn(x, sd, p + "res_layer.0.")
            r = F.conv2d(r, sd[p + "res_layer.1.weight"], padding=1)
            r = F.prelu(r, sd[p + "res_layer.2.weight"])
            r = F.conv2d(r, sd[p + "res_layer.3.weight"], stride=stride, padding=1)
            r = _bn(r, sd, p + "res_layer.4.")
            if p + "shortcut_layer.0.weight" in sd:
                s = _bn(F.conv2d(x, sd[p + "shortcut_layer.0.weight"], stride=stride), sd, p + "shortcut_layer.1.")
            else:
                s = x[:, :, ::stride, ::stride]  # MaxPool2d(1, stride)
            x = r + s
            flat += 1
    return x


def _rearrange_patches(f, p):
    """einops 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' through unfold."""
    B, C = f.shape[:2]
    t = f.unfold(2, p, p).unfold(3, p, p)  # (B, C, h, w, p1, p2)
    return t.permute(0, 2, 3, 4, 5, 1).reshape(B, t.shape[2] * t.shape[3], p * p * C)


def official_forward(sd, x, text_embed_native, num_stages=3, num_heads=4, patch_sizes=(2, 4, 6, 12)):
    """Released ModelClassifier.forward on official keys (eval mode). ``text_embed_native``: CLIP features
    [C, 512] in the released prompt order. Returns (label logits, similarity logits), both in RAF-DB order."""
    f = F.adaptive_avg_pool2d(_ir50(sd, x, num_stages), 12)
    tokens = []
    for p in patch_sizes:
        k = TOKEN_OF_PATCH[p]
        tokens.append(F.linear(_rearrange_patches(f, p), sd[f"token{k}.1.weight"], sd[f"token{k}.1.bias"]))
    t = _bn(torch.cat(tokens, 1), sd, "vit.norm.")
    B, _, D = t.shape
    t = torch.cat([sd["vit.cls_token"].expand(B, -1, -1), sd["vit.clip_token"].expand(B, -1, -1), t], 1)
    i = 0
    while f"vit.blocks.{i}.norm1.weight" in sd:
        p = f"vit.blocks.{i}."
        h = F.layer_norm(t, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])  # nn.LayerNorm default eps 1e-5
        N = h.shape[1]
        qkv = F.linear(h, sd[p + "attn.qkv.weight"]).reshape(B, N, 3, num_heads, D // num_heads).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * (D // num_heads) ** -0.5).softmax(dim=-1)
        a = (attn @ qkv[2]).transpose(1, 2).reshape(B, N, D)
        t = t + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(t, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
        h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        t = t + h
        i += 1
    logits = F.linear(t[:, 0], sd["vit.head.0.weight"], sd["vit.head.0.bias"])
    img = t[:, 0] / t[:, 0].norm(dim=-1, keepdim=True)
    text = F.linear(text_embed_native.float(), sd["fc2.weight"], sd["fc2.bias"])
    text = text / text.norm(dim=-1, keepdim=True)
    return logits, 100.0 * img @ text.t()
