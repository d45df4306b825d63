"""Compile every Triton kernel ahead of time for NVIDIA targets, without a GPU.

Run as a script (``python tests/ops/triton_aot.py [--quick] 90 80``) in a process where TRITON_INTERPRET is unset:
triton's CUDA backend lowers each kernel to PTX and assembles a cubin with its bundled ptxas, so type
errors, shape rules that only the compiler enforces (tl.dot operands ≥ 16, layouts) and register/shared
memory overflows show up here even on a CPU-only machine. Prints one line per kernel and exits non-zero on
the first failure.
"""
from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "unset TRITON_INTERPRET to compile for a GPU"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastfer.ops.backends.triton import attention, cls_select, patch_pool  # noqa: E402

PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def _sig(kernel, values: dict) -> tuple[dict, dict, dict]:
    """Split {arg: type-or-constexpr-value} into triton's signature, constexprs and options."""
    signature, constexprs, options = {}, {}, {}
    constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
    for name in kernel.arg_names:
        if name in constexpr_names:
            signature[name] = "constexpr"
            constexprs[name] = values[name]
        else:
            signature[name] = values[name]
    for opt in ("num_warps", "num_stages"):
        if opt in values:
            options[opt] = values[opt]
    return signature, constexprs, options


def cases(quick: bool = False):
    """Kernel variants to compile; ``quick`` keeps one variant per kernel and code path (for CI)."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        p = PTR[dtype]
        for score in (0, 3) if quick else range(5):
            for has_pos in (score == 0,) if quick else (False, True):
                yield f"patch_pool_fwd {dtype} score={score} pos={has_pos}", patch_pool._patch_pool_fwd_kernel, dict(
                    x_ptr=p, pos_ptr=p, tok_ptr=p, index_ptr="*i64", score_ptr="*fp32", N="i32", C="i32", K="i32",
                    stride_xb="i64", stride_xn="i64", stride_xc="i64", stride_pn="i64", stride_pc="i64",
                    SCORE=score, HAS_POS=has_pos, BLOCK_N=32, BLOCK_C=64, BLOCK_R=64, num_warps=4)
        yield f"patch_pool_bwd {dtype}", patch_pool._patch_pool_bwd_kernel, dict(
            grad_tok_ptr=p, inverse_ptr="*i32", grad_x_ptr=p, N="i32", C="i32", K="i32",
            stride_gb="i64", stride_gn="i64", stride_gc="i64", BLOCK_N=32, BLOCK_C=64, num_warps=4)
        for D in (96, 256) if quick else (16, 64, 96, 256):
            block_d = max(16, triton.next_power_of_2(D))
            for score in (0, 1):
                for select in (score == 1,) if quick else (False, True):
                    yield f"cls_select {dtype} D={D} score={score} select={select}", cls_select._cls_select_kernel, dict(
                        qkv_ptr=p, score_ptr="*fp32", index_ptr="*i64", N="i32", H="i32", D="i32", KEEP="i32",
                        M="i32", stride_b="i64", stride_n="i64", stride_3="i64", stride_h="i64", stride_d="i64",
                        scale="fp32", SCORE=score, SELECT=select, BLOCK_N=64, BLOCK_D=block_d, BLOCK_H=8,
                        BLOCK_R=64, num_warps=4)
            cfg = attention._config(D, dtype)
            common = dict(N="i32", M="i32", H="i32", D="i32", stride_b="i64", stride_n="i64", stride_3="i64",
                          stride_h="i64", stride_d="i64", **cfg)
            yield f"attn_fwd {dtype} D={D}", attention._attn_fwd_kernel, dict(
                qkv_ptr=p, index_ptr="*i64", out_ptr=p, lse_ptr="*fp32", qk_scale="fp32", **common)
            yield f"attn_bwd_delta {dtype} D={D}", attention._attn_bwd_delta_kernel, dict(
                out_ptr=p, grad_out_ptr=p, delta_ptr="*fp32", M="i32", H="i32", D="i32",
                BLOCK_M=cfg["BLOCK_M"], BLOCK_D=cfg["BLOCK_D"], num_warps=4)
            for name, kernel in (("dkdv", attention._attn_bwd_dkdv_kernel), ("dq", attention._attn_bwd_dq_kernel)):
                yield f"attn_bwd_{name} {dtype} D={D}", kernel, dict(
                    qkv_ptr=p, index_ptr="*i64", grad_out_ptr=p, lse_ptr="*fp32", delta_ptr="*fp32", dqkv_ptr=p,
                    scale="fp32", qk_scale="fp32", **common)


def main(archs: list[int], quick: bool) -> int:
    n = 0
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        for label, kernel, values in cases(quick):
            signature, constexprs, options = _sig(kernel, values)
            try:
                compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=target, options=options)
            except Exception as exc:  # report which kernel/config broke, then fail
                print(f"FAIL sm_{arch} {label}: {type(exc).__name__}: {exc}")
                return 1
            md = compiled.metadata
            print(f"ok   sm_{arch} {label}: shared={md.shared} B, regs={getattr(compiled, 'n_regs', '?')}")
            n += 1
    print(f"compiled {n} kernel variants")
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main([int(a) for a in args if a != "--quick"] or [90], "--quick" in args))
