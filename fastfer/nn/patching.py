"""One-call patching: put fastfer's fused attention and token pooling into an existing timm ViT.

``patch(model, keep_rates=...)`` swaps every timm ViT ``Block`` of ``model`` (``vit_*``, ``deit_*``, any model
built from ``timm.models.vision_transformer.Block``) in place for a :class:`~fastfer.nn.FusedViTBlock` that
holds the block's own submodules: no parameter is copied or created, ``state_dict`` keys stay the same, and
``unpatch(model)`` puts the original blocks back. Blocks of fastfer's own models (:class:`PoolingBlock`,
blocks whose ``attn`` is a fastfer :class:`Attention`) are already fused and are left in place; with
``keep_rates`` their pooling rate is changed (and restored by ``unpatch``).

Token pooling (EViT / APViT style, no token fusion): at a layer with rate r < 1, the block keeps CLS and the
ceil(r·(N-1)) (``keep_rule="evit"``) or max(int(r·(N-1)), 1) (``"apvit"``) tokens with the highest CLS
score, in positional order, after the attention residual and before the MLP. Later layers see fewer tokens.
Pooling needs CLS at token 0 and no other prefix token (DeiT's distillation token, register tokens), and
``forward_intermediates`` (which reshapes tokens to a grid) no longer works while pooling is on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

from timm.models.vision_transformer import Block as TimmBlock
from torch import nn

from fastfer.nn.attention import KEEP_RULES, Attention, TokenPoolAttention, check_keep_rate, keep_count
from fastfer.nn.block import PoolingBlock
from fastfer.nn.timm_vit import FusedViTBlock, check_timm_block, type_name
from fastfer.ops.reference import CLS_SCORES

KeepRates = Union[None, Sequence[Optional[float]], Mapping[int, Optional[float]]]
_RECORD = "_fastfer_patch"


@dataclass(frozen=True)
class PatchedLayer:
    """One transformer block of the patched model, in forward order."""

    index: int  # layer number (0 = first block)
    path: str  # module path, e.g. "blocks.3"
    original: str  # class of the module found there
    action: str  # "fused" (replaced), "already fused" (left in place), "retuned" (fastfer block, rate changed)
    keep_rate: Optional[float]  # pooling rate (None = no pooling) after patching
    keep: Optional[int] = None  # exact keep count of a fastfer block (wins over keep_rate)
    keep_rule: str = "evit"


@dataclass
class PatchReport:
    """What :func:`patch` changed. ``str(report)`` prints a table; :meth:`token_counts` predicts token counts."""

    model: str
    layers: list[PatchedLayer]
    score: str
    # (parent, child name, original module) and (attention, original attributes): what unpatch restores.
    _swaps: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list, repr=False)
    _retunes: list[tuple[nn.Module, dict[str, Any]]] = field(default_factory=list, repr=False)

    @property
    def replaced(self) -> list[PatchedLayer]:
        """The layers whose module was swapped for a fused one."""
        return [layer for layer in self.layers if layer.action == "fused"]

    @property
    def pooling(self) -> dict[int, float]:
        """{layer: keep_rate} of the layers that may drop tokens."""
        return {layer.index: layer.keep_rate for layer in self.layers
                if layer.keep is not None or (layer.keep_rate is not None and layer.keep_rate < 1)}

    def token_counts(self, n_tokens: int) -> list[int]:
        """Tokens (CLS included) leaving each layer for an input of ``n_tokens`` tokens."""
        counts = []
        for layer in self.layers:
            keep = keep_count(n_tokens, layer.keep_rate, layer.keep, layer.keep_rule)
            n_tokens = n_tokens if keep is None else 1 + keep
            counts.append(n_tokens)
        return counts

    def __str__(self) -> str:
        name = self.model.rsplit(".", 1)[-1]
        lines = [f"fastfer.patch({name}): {len(self.replaced)}/{len(self.layers)} layers fused, "
                 f"score={self.score!r}"]
        for layer in self.layers:
            rate = "" if layer.keep_rate is None else f"  keep_rate={layer.keep_rate} ({layer.keep_rule})"
            if layer.keep is not None:
                rate = f"  keep={layer.keep}"
            lines.append(f"  [{layer.index:>2}] {layer.path:<24} {layer.original.rsplit('.', 1)[-1]:<16} "
                         f"{layer.action}{rate}")
        return "\n".join(lines)


def patch(model: nn.Module, *, attention: bool = True, keep_rates: KeepRates = None, score: str = "prob_mean",
          keep_rule: str = "evit") -> PatchReport:
    """Put fastfer's fused attention (and optionally token pooling) into a timm ViT-family model, in place.

    Args:
        model: a timm ``VisionTransformer`` (``vit_*``, ``deit_*``), a fastfer model, or any module whose
            transformer blocks are ``timm.models.vision_transformer.Block``. Patch before ``torch.compile``.
        attention: fuse the attention of every block; False fuses only the layers named in ``keep_rates``.
        keep_rates: token pooling: None (off), one rate per layer (a list as long as the model's blocks,
            None for no pooling), or {layer index: rate}. A rate in (0, 1]; 1.0 keeps every token.
        score: CLS score that ranks tokens: ``prob_mean`` (EViT: softmax CLS row averaged over heads) or
            ``logit_sum`` (APViT: pre-softmax CLS logits summed over heads).
        keep_rule: ``evit`` ceil(rate·(N-1)) or ``apvit`` max(int(rate·(N-1)), 1) tokens kept besides CLS.

    Returns:
        A :class:`PatchReport` listing every layer and what was done to it; also stored on the model for
        :func:`unpatch`.

    Raises:
        TypeError: the model (or one of its blocks / attention modules) is of a type that cannot be patched;
            the message names the type and the module path. Nothing is changed when an error is raised.
        ValueError: bad arguments, attention dropout > 0, pooling on a model with extra prefix tokens, or a
            model that is already patched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
        raise TypeError("model: got a torch.compile'd module (OptimizedModule); call fastfer.patch on the "
                        "model first, then torch.compile the patched model")
    if getattr(model, _RECORD, None) is not None:
        raise ValueError(f"model: this {type(model).__name__} is already patched; call fastfer.unpatch(model) first")
    if score not in CLS_SCORES:
        raise ValueError(f"score: expected one of {CLS_SCORES}, got {score!r}")
    if keep_rule not in KEEP_RULES:
        raise ValueError(f"keep_rule: expected one of {KEEP_RULES}, got {keep_rule!r}")

    blocks = _find_blocks(model)
    rates = _layer_rates(keep_rates, len(blocks))
    if not attention and not rates:
        raise ValueError("attention=False with keep_rates=None: nothing to patch")
    if any(r is not None and r < 1 for r in rates.values()):
        _check_pooling_layout(model)

    # Validate every layer before changing anything, so a refusal leaves the model untouched.
    plan = []
    for i, (path, block) in enumerate(blocks):
        rate = rates.get(i)
        fused = _is_fastfer_block(block)
        if not fused:
            check_timm_block(block, path)
        elif i in rates and not isinstance(block.attn, TokenPoolAttention):
            raise TypeError(f"keep_rates[{i}]: {path} is a {type_name(block)} whose attention "
                            f"({type_name(block.attn)}) cannot pool tokens")
        plan.append((i, path, block, rate, fused))

    report = PatchReport(model=type_name(model), layers=[], score=score)
    for i, path, block, rate, fused in plan:
        if fused:
            report.layers.append(_retune(report, i, path, block, rate if i in rates else None, score, keep_rule))
        elif attention or i in rates:
            parent, name = _parent(model, path)
            setattr(parent, name, FusedViTBlock(block, keep_rate=rate, score=score, keep_rule=keep_rule))
            report._swaps.append((parent, name, block))
            report.layers.append(PatchedLayer(i, path, type_name(block), "fused", rate, None, keep_rule))
        else:
            report.layers.append(PatchedLayer(i, path, type_name(block), "unchanged", None, None, keep_rule))
    object.__setattr__(model, _RECORD, report)
    return report


def unpatch(model: nn.Module) -> PatchReport:
    """Undo :func:`patch`: put the original modules (and pooling settings) back; returns the patch's report.

    The restored modules take the current train/eval mode of the ones they replace; weights are shared, so
    training done while patched is kept.
    """
    report = getattr(model, _RECORD, None)
    if report is None:
        raise ValueError(f"model: this {type(model).__name__} was not patched by fastfer.patch (nothing to undo)")
    for parent, name, original in reversed(report._swaps):
        current = getattr(parent, name)
        original.train(current.training)
        setattr(parent, name, original)
    for attn, attrs in reversed(report._retunes):
        for key, value in attrs.items():
            setattr(attn, key, value)
    object.__delattr__(model, _RECORD)
    return report


def patch_report(model: nn.Module) -> Optional[PatchReport]:
    """The report of the patch currently applied to ``model``, or None."""
    return getattr(model, _RECORD, None)


# --- helpers ----------------------------------------------------------------------------------------------


def _is_fastfer_block(module: nn.Module) -> bool:
    return isinstance(module, PoolingBlock) or isinstance(getattr(module, "attn", None), Attention)


def _find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Transformer blocks in forward (registration) order: modules with an ``attn`` submodule."""
    blocks: list[tuple[str, nn.Module]] = []
    for path, module in model.named_modules():
        if any(path.startswith(p + ".") for p, _ in blocks):
            continue  # inside a block already found
        if isinstance(module, FusedViTBlock):
            raise ValueError(f"model: {path} is already a fastfer FusedViTBlock; unpatch the model first")
        if isinstance(module, TimmBlock) or _is_fastfer_block(module):
            if not path:
                raise TypeError(f"model: a lone {type_name(module)} cannot be swapped in place; patch the model "
                                "that contains it (or build fastfer.nn.FusedViTBlock(block) yourself)")
            blocks.append((path, module))
        elif isinstance(getattr(module, "attn", None), nn.Module):
            raise TypeError(f"{path or 'model'}: {type_name(module)} is not supported; fastfer.patch handles "
                            f"{type_name(TimmBlock)} and fastfer's own blocks")
    if not blocks:
        raise TypeError(f"model: {type_name(model)} has no transformer block fastfer.patch can handle "
                        f"({type_name(TimmBlock)} or fastfer PoolingBlock); supported: timm vit_*/deit_* "
                        "VisionTransformer and fastfer's models")
    return blocks


def _layer_rates(keep_rates: KeepRates, n_layers: int) -> dict[int, Optional[float]]:
    """{layer: rate} from a list or a mapping; every entry validated (rates in (0, 1], layers in range)."""
    if keep_rates is None:
        return {}
    if isinstance(keep_rates, Mapping):
        items = list(keep_rates.items())
        for layer, _ in items:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n_layers:
                raise ValueError(f"keep_rates: expected layer indices in [0, {n_layers}) for a model with "
                                 f"{n_layers} blocks, got key {layer!r}")
    elif isinstance(keep_rates, Sequence) and not isinstance(keep_rates, str):
        if len(keep_rates) != n_layers:
            raise ValueError(f"keep_rates: expected one rate per block ({n_layers} entries, None for no pooling), "
                             f"got {len(keep_rates)} entries")
        items = list(enumerate(keep_rates))
    else:
        raise TypeError(f"keep_rates: expected None, a list of rates or a {{layer: rate}} dict, "
                        f"got {type(keep_rates).__name__}")
    for layer, rate in items:
        check_keep_rate(rate, f"keep_rates[{layer}]")
    return {layer: (None if rate is None else float(rate)) for layer, rate in items if rate is not None}


def _check_pooling_layout(model: nn.Module) -> None:
    """Pooling ranks tokens 1..N-1 against CLS at 0: refuse models with no CLS or other prefix tokens."""
    if getattr(model, "has_class_token", True) is False or (hasattr(model, "cls_token") and model.cls_token is None):
        raise ValueError(f"keep_rates: token pooling needs a class token at position 0; "
                         f"{type_name(model)} has none (class_token=False)")
    prefix = getattr(model, "num_prefix_tokens", 1)
    if prefix != 1:
        raise ValueError(f"keep_rates: token pooling keeps only token 0 (CLS) fixed, but {type_name(model)} has "
                         f"num_prefix_tokens={prefix} (distillation / register tokens) that pooling could drop; "
                         "patch it with keep_rates=None (fused attention only)")


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def _retune(report: PatchReport, i: int, path: str, block: nn.Module, rate: Optional[float], score: str,
            keep_rule: str) -> PatchedLayer:
    """Leave a fastfer block in place; with a rate for it, change its attention's pooling (recorded for undo)."""
    attn = block.attn
    if rate is None or not isinstance(attn, TokenPoolAttention):
        return PatchedLayer(i, path, type_name(block), "already fused", getattr(attn, "keep_rate", None),
                            getattr(attn, "keep", None), getattr(attn, "keep_rule", "apvit"))
    report._retunes.append((attn, dict(keep_rate=attn.keep_rate, keep=attn.keep, score=attn.score,
                                       keep_rule=attn.keep_rule)))
    attn.keep_rate, attn.keep, attn.score, attn.keep_rule = rate, None, score, keep_rule
    return PatchedLayer(i, path, type_name(block), "retuned", rate, None, keep_rule)


__all__ = ["PatchReport", "PatchedLayer", "patch", "patch_report", "unpatch"]
