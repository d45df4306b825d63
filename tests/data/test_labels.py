import pytest
import torch

from fastfer.labels import (
    EXPRESSIONS,
    NATIVE_ORDERS,
    UnknownLabelError,
    canonical_index,
    label_names,
    native_to_canonical,
    normalize_name,
    order_map,
    permute_classifier_rows,
    permute_rows,
)

# docs/datasets.md §2, "native → canonical" column, typed from the spec (−1 = dropped)
SPEC_MAPS = {
    "fer2013": (6, 5, 4, 1, 2, 3, 0),
    "expw": (6, 5, 4, 1, 2, 3, 0),
    "rafdb": (3, 4, 5, 1, 2, 6, 0),
    "ferplus": (0, 1, 3, 2, 6, 5, 4, 7, -1, -1),
    "affectnet": (0, 1, 2, 3, 4, 5, 6, 7, -1, -1, -1),
    "sfew": (6, 5, 4, 1, 0, 2, 3),
    "hsemotion": (6, 7, 5, 4, 1, 0, 2, 3),
    "apvit": (6, 5, 4, 2, 1, 3, 0, 7),
    "fer_former": (3, 4, 5, 1, 2, 6, 0),
    "conv_cut_rafdb": (6, 5, 4, 1, 0, 2, 3),
    "conv_cut_ferplus": (6, 7, 5, 4, 1, 0, 2, 3),
    "pyfeat": (6, 5, 4, 1, 2, 3, 0),
}


def test_canonical_order():
    assert EXPRESSIONS == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
    assert label_names(7) == EXPRESSIONS[:7] and label_names(8) == EXPRESSIONS
    with pytest.raises(ValueError, match="num_classes: expected 7 or 8, got 6"):
        label_names(6)


@pytest.mark.parametrize("name,expected", [("Angry", "anger"), ("HAPPINESS", "happy"), ("sadness", "sad"),
                                           ("Surprised", "surprise"), ("fearful", "fear"), ("Disgusted", "disgust"),
                                           (" Neutral ", "neutral"), ("contempt", "contempt"), ("NF", "nf"),
                                           ("No-Face", "no-face"), ("no_face", "no-face")])
def test_normalize_name(name, expected):
    assert normalize_name(name) == expected


def test_unknown_name_raises_with_the_name():
    with pytest.raises(UnknownLabelError, match="unknown label name 'bored'"):
        normalize_name("bored")
    with pytest.raises(TypeError, match="expected a str, got int"):
        normalize_name(3)


@pytest.mark.parametrize("source", sorted(SPEC_MAPS))
def test_native_orders_match_the_spec_table(source):
    assert native_to_canonical(NATIVE_ORDERS[source], 8) == SPEC_MAPS[source]


def test_seven_class_drops_contempt():
    assert canonical_index("Contempt", 7) is None and canonical_index("Contempt", 8) == 7
    assert native_to_canonical(NATIVE_ORDERS["ferplus"], 7) == (0, 1, 3, 2, 6, 5, 4, -1, -1, -1)
    assert canonical_index("uncertain", 8) is None


def test_duplicate_names_rejected():
    with pytest.raises(ValueError, match="fold to the same canonical class"):
        native_to_canonical(["angry", "anger"], 7)


def test_apvit_raf_table_is_reproduced_by_names():
    # APViT remaps RAF-DB file order to its FER_CLASSES with (5, 2, 1, 4, 3, 0, 6) (the official APViT code)
    assert order_map(NATIVE_ORDERS["rafdb"], NATIVE_ORDERS["apvit"][:7]) == (5, 2, 1, 4, 3, 0, 6)


def test_permute_classifier_rows_moves_each_row_to_its_canonical_slot():
    native = NATIVE_ORDERS["apvit"]  # 8 rows in APViT order
    weight = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds value i
    bias = torch.arange(8, dtype=torch.float32)
    w, b = permute_classifier_rows(weight, bias, native)
    for i, name in enumerate(native):
        c = EXPRESSIONS.index(normalize_name(name))
        assert torch.equal(w[c], weight[i]) and b[c] == bias[i]
    # logits agree class by class: x @ W_native.T reordered == x @ W_canon.T
    x = torch.randn(2, 3)
    mapping = order_map(native, EXPRESSIONS)
    native_logits = x @ weight.T + bias
    canon_logits = x @ w.T + b
    for i in range(8):
        assert torch.allclose(canon_logits[:, mapping[i]], native_logits[:, i])


def test_permute_classifier_rows_7_class_and_no_bias():
    w, b = permute_classifier_rows(torch.eye(7), None, NATIVE_ORDERS["fer2013"])
    assert b is None
    assert w[6].argmax().item() == 0  # FER2013 row 0 (Angry) → canonical 6 (anger)


def test_order_map_and_permute_rows_errors():
    with pytest.raises(ValueError, match="must name the same classes"):
        order_map(NATIVE_ORDERS["fer2013"], EXPRESSIONS)
    with pytest.raises(ValueError, match="expected a tensor with 3 rows"):
        permute_rows(torch.zeros(4, 2), (0, 1, 2))
    with pytest.raises(ValueError, match="must be a permutation"):
        permute_rows(torch.zeros(3, 2), (0, 0, 2))
