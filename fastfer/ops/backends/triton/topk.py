"""Top-k selection inside a Triton program, with indices in ascending positional order.

Triton has no argsort and ``tl.topk`` returns values only, so positions are ranked by pairwise comparison
(docs/kernels.md §4, option A):

    rank_i = #{j : s_j > s_i} + #{j < i : s_j == s_i}

Position i is kept when rank_i < k, and its output slot is the running count of kept positions before it,
so the kept positions come out in ascending order with no second sort. Scores are compared through an
order-preserving int32 image of the fp32 bits, in which NaN sits below -inf (NaN ranks lowest) and -0.0
equals +0.0, exactly the order of the reference's stable sort.
"""
import triton
import triton.language as tl


@triton.jit
def ordered_key(s):
    """fp32 → int32 with the same order as the floats; NaN maps below every number, -0.0 to +0.0."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(s != s, -2147483648, key)


@triton.jit
def select_topk_positional(score_ptr, index_ptr, start, N, K, BLOCK: tl.constexpr):
    """Rank positions start..N-1 of ``score_ptr`` (fp32, written earlier by this program: the caller puts a
    barrier in between) and write the K best positions, ascending, as int64 to ``index_ptr[0:K]``."""
    count = tl.full((), 0, tl.int32)
    for i0 in range(start, N, BLOCK):
        offs_i = i0 + tl.arange(0, BLOCK)
        mask_i = offs_i < N
        key_i = ordered_key(tl.load(score_ptr + offs_i, mask=mask_i, other=0.0))
        rank = tl.zeros([BLOCK], dtype=tl.int32)
        for j0 in range(start, N, BLOCK):
            offs_j = j0 + tl.arange(0, BLOCK)
            mask_j = offs_j < N
            key_j = ordered_key(tl.load(score_ptr + offs_j, mask=mask_j, other=0.0))
            higher = key_j[None, :] > key_i[:, None]
            tie_before = (key_j[None, :] == key_i[:, None]) & (offs_j[None, :] < offs_i[:, None])
            beats = (higher | tie_before) & mask_j[None, :]
            rank += tl.sum(beats.to(tl.int32), axis=1)
        keep = (rank < K) & mask_i
        slot = count + tl.cumsum(keep.to(tl.int32), axis=0) - 1
        tl.store(index_ptr + slot, offs_i.to(tl.int64), mask=keep)
        count += tl.sum(keep.to(tl.int32), axis=0)
