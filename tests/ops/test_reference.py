"""The reference ops reproduce the official algorithms: hand-worked examples, an independent naive fp64
oracle written with Python loops, and gradcheck."""
import math

import pytest
import torch

import fastfer
from fastfer.ops import reference

# 6 positions × 2 channels; per-position scores worked out by hand below each kind.
TOKENS = torch.tensor([[1.0, -2.0], [0.5, 0.5], [-3.0, 0.0], [2.0, 2.0], [0.0, -1.0], [1.0, 1.0]])
#   l1:      3    1    3    4    1    2
#   sum:    -1    1   -3    4   -1    2
#   l2:      5  0.5    9    8    1    2
#   max:     1  0.5    0    2    0    1
#   max_abs: 2  0.5    3    2    1    1
HAND_APP = [
    ("l1", 3, [0, 2, 3]),  # 4, then the tie 3/3 at positions 0 and 2 (both fit)
    ("l1", 4, [0, 2, 3, 5]),
    ("l1", 5, [0, 1, 2, 3, 5]),  # tie 1/1 at positions 1 and 4 → the lower index wins
    ("sum", 2, [3, 5]),
    ("sum", 4, [0, 1, 3, 5]),  # tie -1/-1 at positions 0 and 4 → 0
    ("l2", 2, [2, 3]),
    ("max", 2, [0, 3]),  # 2, then the tie 1/1 at positions 0 and 5 → 0
    ("max_abs", 2, [0, 2]),  # 3, then the tie 2/2 at positions 0 and 3 → 0
    ("max_abs", 6, [0, 1, 2, 3, 4, 5]),
]


@pytest.mark.parametrize("score,k,expected", HAND_APP)
def test_patch_pool_hand_examples(score, k, expected):
    tokens, index, _ = reference.patch_pool(TOKENS[None], k, None, score)
    assert index.tolist() == [expected]
    assert torch.equal(tokens[0], TOKENS[expected])


def test_patch_pool_hand_example_with_pos_and_map_layout():
    pos = torch.arange(12.0).view(6, 2) * 0.1
    fmap = TOKENS.T.reshape(1, 2, 2, 3)  # (B, C, H, W) whose raster order is the 6 positions above
    tokens, index, scores = reference.patch_pool(fmap, 3, pos, "l1")
    assert index.tolist() == [[0, 2, 3]]
    assert torch.allclose(scores, torch.tensor([[3.0, 1.0, 3.0, 4.0, 1.0, 2.0]]))
    assert torch.allclose(tokens[0], torch.tensor([[1.0, -1.9], [-2.6, 0.5], [2.6, 2.7]]))


def _hand_qkv(k3_head1: float = 1.0) -> torch.Tensor:
    """B=1, N=4, H=2, D=1. q0 = (1, 2) per head; keys t0..t3 = (0,0), (1,1), (2,-1), (-1,k3_head1)."""
    qkv = torch.zeros(1, 4, 3, 2, 1)
    qkv[0, 0, 0, :, 0] = torch.tensor([1.0, 2.0])
    qkv[0, :, 1, 0, 0] = torch.tensor([0.0, 1.0, 2.0, -1.0])
    qkv[0, :, 1, 1, 0] = torch.tensor([0.0, 1.0, -1.0, k3_head1])
    qkv[0, :, 2, 0, 0] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # v head 0 picks token 0's probability
    return qkv


def test_token_pool_hand_example_logit_sum():
    # logits head 0: 1·(0, 1, 2, -1); head 1: 2·(0, 1, -1, 1) = (0, 2, -2, 2); sum = (0, 3, 0, 1)
    out, index, scores, _ = reference.token_pool_attention(_hand_qkv(), 2, 1.0, "logit_sum")
    assert torch.allclose(scores, torch.tensor([[0.0, 3.0, 0.0, 1.0]]))
    assert index.tolist() == [[0, 1, 3]]  # CLS first, then tokens 1 (3) and 3 (1), ascending
    # CLS, head 0: softmax(0, 1, 2, -1)[0] = 1 / (1 + e + e² + e⁻¹) = 0.087144
    assert out[0, 0, 0].item() == pytest.approx(1 / (1 + math.e + math.e**2 + math.exp(-1)), rel=1e-6)
    assert reference.token_pool_attention(_hand_qkv(), 1, 1.0, "logit_sum")[1].tolist() == [[0, 1]]


def test_token_pool_hand_example_tie_goes_to_lower_index():
    # with k3 head 1 = 2 the sums are (0, 3, 0, 3): tokens 1 and 3 tie, keep=1 must keep token 1
    _, index, scores, _ = reference.token_pool_attention(_hand_qkv(2.0), 1, 1.0, "logit_sum")
    assert scores[0, 1] == scores[0, 3] == 3.0
    assert index.tolist() == [[0, 1]]


def test_token_pool_hand_example_prob_mean_ranks_differently():
    # head 0 softmax(0,1,2,-1) = (.08714, .23688, .64391, .03206); head 1 softmax(0,2,-2,2) =
    # (.06284, .46433, .00850, .46433); mean = (.07499, .35060, .32621, .24819) → keep 2: tokens 1, 2
    _, index, scores, _ = reference.token_pool_attention(_hand_qkv(), 2, 1.0, "prob_mean")
    assert scores[0].tolist() == pytest.approx([0.07499, 0.35060, 0.32621, 0.24819], abs=1e-5)
    assert index.tolist() == [[0, 1, 2]]


def test_selection_order_nan_lowest_neg_zero_equals_zero():
    s = torch.tensor([[float("nan"), -math.inf, 0.0, -0.0, 5.0, float("nan")]])
    assert reference.select_topk_positional(s, 1).tolist() == [[4]]
    assert reference.select_topk_positional(s, 3).tolist() == [[2, 3, 4]]  # -0.0 ties +0.0: index order
    assert reference.select_topk_positional(s, 4).tolist() == [[1, 2, 3, 4]]  # -inf beats NaN
    assert reference.select_topk_positional(s, 5).tolist() == [[0, 1, 2, 3, 4]]  # NaN tie → lower index


# --- independent naive oracle: Python loops in fp64 --------------------------------------------------------


def naive_patch_pool(tokens: torch.Tensor, k: int, score: str):
    B, N, C = tokens.shape
    rows, picks = [], []
    for b in range(B):
        vals = [[float(tokens[b, n, c]) for c in range(C)] for n in range(N)]
        f = {"l1": lambda v: sum(abs(a) for a in v), "sum": sum, "l2": lambda v: sum(a * a for a in v),
             "max": max, "max_abs": lambda v: max(abs(a) for a in v)}[score]
        s = [f(v) for v in vals]
        order = sorted(range(N), key=lambda n: (-s[n], n))[:k]
        rows.append(s)
        picks.append(sorted(order))
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(picks)


def naive_attention(qkv: torch.Tensor, keep, scale: float, score: str):
    B, N, _, H, D = qkv.shape
    q = qkv.double()
    dot = lambda a, b: sum(float(a[d]) * float(b[d]) for d in range(D))  # noqa: E731
    outs, idxs, all_scores = [], [], []
    for b in range(B):
        logits = [[scale * dot(q[b, 0, 0, h], q[b, j, 1, h]) for j in range(N)] for h in range(H)]
        if score == "logit_sum":
            s = [sum(logits[h][j] for h in range(H)) for j in range(N)]
        else:
            probs = [[math.exp(x) / sum(math.exp(y) for y in row) for x in row] for row in logits]
            s = [sum(probs[h][j] for h in range(H)) / H for j in range(N)]
        rest = list(range(1, N)) if keep is None else sorted(sorted(range(1, N), key=lambda j: (-s[j], j))[:keep])
        index = [0] + rest if keep is not None else list(range(N))
        out = []
        for i in index:
            row = []
            for h in range(H):
                ls = [scale * dot(q[b, i, 0, h], q[b, j, 1, h]) for j in range(N)]
                m = max(ls)
                w = [math.exp(x - m) for x in ls]
                z = sum(w)
                row += [sum(w[j] * float(q[b, j, 2, h, d]) for j in range(N)) / z for d in range(D)]
            out.append(row)
        outs.append(out)
        idxs.append(index)
        all_scores.append(s)
    return torch.tensor(outs, dtype=torch.float64), torch.tensor(idxs), torch.tensor(all_scores, dtype=torch.float64)


@pytest.mark.parametrize("score", reference.PATCH_SCORES)
def test_patch_pool_matches_naive_oracle(score):
    torch.manual_seed(1)
    x = torch.randn(2, 7, 23, dtype=torch.float64)
    tokens, index, scores = reference.patch_pool(x, 9, None, score)
    n_scores, n_index = naive_patch_pool(x, 9, score)
    assert torch.allclose(scores.double(), n_scores, rtol=1e-6)
    assert torch.equal(index, n_index)
    assert torch.equal(tokens, x.gather(1, n_index[..., None].expand(-1, -1, 23)))


@pytest.mark.parametrize("keep", [None, 1, 5])
@pytest.mark.parametrize("score", reference.CLS_SCORES)
def test_token_pool_matches_naive_oracle(keep, score):
    torch.manual_seed(2)
    qkv = torch.randn(2, 9, 3, 3, 5, dtype=torch.float64)
    out, index, scores, lse = reference.token_pool_attention(qkv, keep, 0.37, score)
    n_out, n_index, n_scores = naive_attention(qkv, keep, 0.37, score)
    assert torch.allclose(scores.double(), n_scores, rtol=1e-6, atol=1e-7)
    assert torch.equal(index, n_index)
    assert torch.allclose(out, n_out, rtol=1e-10, atol=1e-12)
    assert lse.shape == (2, 3, index.shape[1])


def test_gradcheck_patch_pool_reference_backend():
    torch.manual_seed(3)
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda x, pos: fastfer.patch_pool(x, 4, pos=pos, backend="torch").tokens  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, pos))
    xcl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(fn, (xcl, pos))


@pytest.mark.parametrize("keep", [None, 3])
def test_gradcheck_token_pool_reference_backend(keep):
    torch.manual_seed(4)
    qkv = torch.randn(2, 7, 3, 2, 4, dtype=torch.float64, requires_grad=True)
    fn = lambda qkv: fastfer.token_pool_attention(qkv, keep, backend="torch").out  # noqa: E731
    assert torch.autograd.gradcheck(fn, (qkv,))


def test_explicit_backward_formulas_match_autograd():
    """The flash-identity backward of the reference equals autograd through the materialised forward."""
    torch.manual_seed(5)
    qkv = torch.randn(2, 11, 3, 3, 8, dtype=torch.float64, requires_grad=True)
    out, index, _, lse = reference.token_pool_attention(qkv, 6, 0.3, "logit_sum")
    g = torch.randn_like(out)
    (auto,) = torch.autograd.grad(out, qkv, g)
    manual = reference.token_pool_attention_backward(g, qkv.detach(), out.detach(), lse, index, 0.3)
    assert torch.allclose(manual, auto, atol=1e-12)

    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(12, 5, dtype=torch.float64, requires_grad=True)
    tokens, pindex, _ = reference.patch_pool(x, 7, pos, "l1")
    gt = torch.randn_like(tokens)
    gx, gpos = torch.autograd.grad(tokens, (x, pos), gt)
    mx, mpos = reference.patch_pool_backward(gt, pindex, tuple(x.shape), False, torch.float64)
    assert torch.equal(mx, gx) and torch.allclose(mpos, gpos)
