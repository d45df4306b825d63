"""IR-50 trunk: layout, parameter count, one unit against a functional transcription, face.evoLVe remap."""
import pytest
import torch
import torch.nn.functional as F

from fastfer.models.irse import IRSE, STAGE_UNITS, remap_evolve_body

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_ir50_three_stages_matches_apvit_trunk():
    trunk = IRSE(50, "ir", num_stages=3)
    # docs/models/apvit.md §7: IR-50 stem + 3 stages = 17,611,968 parameters.
    assert _count(trunk) == 17_611_968
    assert trunk.out_channels == 256
    assert [len(stage) for stage in trunk.body] == [3, 4, 14]
    assert isinstance(trunk.body[0][0].shortcut_layer, torch.nn.MaxPool2d)  # 64 → 64: parameter-free shortcut
    assert trunk.body[1][0].res_layer[3].stride == (2, 2) and trunk.body[1][0].res_layer[1].stride == (1, 1)
    assert trunk.eval()(torch.randn(1, 3, 112, 112)).shape == (1, 256, 14, 14)


@pytest.mark.parametrize("num_stages, channels", [(1, 64), (2, 128), (4, 512)])
def test_stage_cut_sets_output_shape(num_stages, channels):
    trunk = IRSE(50, num_stages=num_stages).eval()
    out = trunk(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, channels, 32 >> num_stages, 32 >> num_stages)
    assert trunk.out_channels == channels


def test_custom_units_widths_and_stem_stride():
    trunk = IRSE(50, num_stages=2, units=(1, 2), widths=(16, 32), stem_stride=2).eval()
    assert trunk.reduction == 8 and trunk.out_channels == 32 and [len(s) for s in trunk.body] == [1, 2]
    assert trunk.input_layer[0].out_channels == 16 and trunk.input_layer[0].stride == (2, 2)
    assert trunk(torch.randn(1, 3, 112, 112)).shape == (1, 32, 14, 14)
    with pytest.raises(ValueError, match="remap_evolve_body: this trunk has custom units/widths"):
        trunk.remap_evolve_body({})
    with pytest.raises(ValueError, match=r"units: expected at least num_stages=2 positive ints, got \(1,\)"):
        IRSE(num_stages=2, units=(1,))
    with pytest.raises(ValueError, match="stem_stride: expected 1 or 2, got 4"):
        IRSE(stem_stride=4)


def test_ir_se_mode_adds_gate_keys():
    trunk = IRSE(50, "ir_se", num_stages=1)
    keys = trunk.state_dict().keys()
    assert "body.0.0.res_layer.5.fc1.weight" in keys and "body.0.0.res_layer.5.fc2.weight" in keys
    assert trunk.eval()(torch.randn(1, 3, 16, 16)).shape == (1, 64, 8, 8)


def _bn(x, prefix, sd):
    return F.batch_norm(x, sd[prefix + "running_mean"], sd[prefix + "running_var"], sd[prefix + "weight"],
                        sd[prefix + "bias"], False, 0.0, 1e-5)


def test_unit_equals_functional_transcription():
    torch.manual_seed(0)
    trunk = IRSE(50, num_stages=2)
    for m in trunk.modules():  # non-trivial BN statistics and PReLU slopes
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.uniform_(0.0, 0.5)
    trunk.eval()
    sd = trunk.state_dict()
    x = torch.randn(2, 64, 12, 12)
    p = "body.1.0."  # 64 → 128, stride 2: conv shortcut
    r = _bn(x, p + "res_layer.0.", sd)
    r = F.conv2d(r, sd[p + "res_layer.1.weight"], padding=1)
    r = F.prelu(r, sd[p + "res_layer.2.weight"])
    r = F.conv2d(r, sd[p + "res_layer.3.weight"], stride=2, padding=1)
    r = _bn(r, p + "res_layer.4.", sd)
    s = _bn(F.conv2d(x, sd[p + "shortcut_layer.0.weight"], stride=2), p + "shortcut_layer.1.", sd)
    torch.testing.assert_close(trunk.body[1][0](x), r + s, rtol=1e-5, atol=1e-5)
    # identity-depth unit with stride 2 (first unit of stage 0): the shortcut is a strided subsampling
    torch.testing.assert_close(trunk.body[0][0].shortcut_layer(x), x[:, :, ::2, ::2])


def _flat_evolve_state_dict(num_layers=50):
    """A face.evoLVe-style checkpoint: flat body.{i}, plus the face-embedding output layer."""
    full = IRSE(num_layers, num_stages=4).state_dict()
    offsets = [sum(STAGE_UNITS[num_layers][:s]) for s in range(4)]
    flat = {}
    for key, value in full.items():
        if key.startswith("body."):
            _, s, u, rest = key.split(".", 3)
            key = f"body.{offsets[int(s)] + int(u)}.{rest}"
        flat[key] = value
    flat["output_layer.0.weight"] = torch.ones(512)
    flat["output_layer.3.weight"] = torch.ones(512, 512 * 7 * 7)
    return flat


def test_remap_evolve_body_loads_strictly_and_reports_dropped():
    flat = _flat_evolve_state_dict()
    assert "body.23.res_layer.1.weight" in flat
    trunk = IRSE(50, num_stages=3)
    dropped = []
    remapped = trunk.remap_evolve_body(flat, dropped)
    trunk.load_state_dict(remapped, strict=True)
    torch.testing.assert_close(trunk.state_dict()["body.2.13.res_layer.3.weight"], flat["body.20.res_layer.3.weight"])
    assert "output_layer.0.weight" in dropped and "output_layer.3.weight" in dropped
    assert "body.21.res_layer.1.weight" in dropped and "body.20.res_layer.1.weight" not in dropped
    assert all(k.startswith(("body.21.", "body.22.", "body.23.", "output_layer.")) for k in dropped)


def test_remap_rejects_nested_keys_and_out_of_range_units():
    with pytest.raises(ValueError, match="already in body.<stage>.<unit> form"):
        remap_evolve_body({"body.0.0.res_layer.1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="names unit 24, but IR-50 has 24 units"):
        remap_evolve_body({"body.24.res_layer.1.weight": torch.zeros(1)})


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_layers=34), "num_layers: expected one of"),
        (dict(mode="se"), "mode: expected one of"),
        (dict(num_stages=0), "num_stages: expected an int in 1..4"),
        (dict(input_size=96), "input_size: expected one of"),
    ],
)
def test_bad_config_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IRSE(**kwargs)


def test_forward_rejects_non_rgb_input():
    with pytest.raises(ValueError, match=r"x: expected a \(B, 3, H, W\) image batch, got shape \(1, 1, 8, 8\)"):
        IRSE(num_stages=1)(torch.randn(1, 1, 8, 8))
