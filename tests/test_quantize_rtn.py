"""modaq.api.quantize_rtn_: the data-free RTN module swap (per-component formats, online
Hadamard on chosen layers, skipped Linears, save / load, errors)."""
import pytest
import torch
from torch import nn

from modaq import api
from modaq.calib import get_adapter
from modaq.calib.tiny import tiny_vlm
from modaq.nn import QuantLinear, W3A16Linear, W4A4Linear, W8A8Linear

pytestmark = pytest.mark.usefixtures("one_thread")


def _stage_linears(model):
    """{stage kind: {full name: module}} of every Linear / QuantLinear in the adapter's stages."""
    out = {}
    for stage in get_adapter(model).stages():
        out[stage.kind] = {f"{bn}.{n}": m for bn, b in zip(stage.names, stage.blocks)
                           for n, m in b.named_modules() if isinstance(m, (nn.Linear, QuantLinear))}
    return out


def _inputs(model, seq=10):
    ids = torch.randint(3, model.config.get_text_config().vocab_size, (2, seq))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_swaps_each_component_to_its_format_and_matches_from_linear():
    model, _ = tiny_vlm("qwen2_vl")
    before = {n: m.weight.detach().clone() for s in _stage_linears(model).values() for n, m in s.items()}
    swapped = api.quantize_rtn_(model, "w3a16", vision_format="w8a8", projector_format=None)
    stages = _stage_linears(model)
    assert all(isinstance(m, W3A16Linear) for m in stages["language"].values())
    assert all(isinstance(m, W8A8Linear) for m in stages["vision"].values())
    assert all(type(m) is nn.Linear for m in stages["projector"].values())
    assert set(swapped) == set(stages["language"]) | set(stages["vision"])
    assert type(model.get_output_embeddings()) is nn.Linear  # lm_head stays FP
    # RTN: the packed buffers are exactly what from_linear makes of the original weight
    name = next(iter(stages["language"]))
    ref = _linear_from(before[name])
    assert torch.equal(stages["language"][name].qweight, ref.qweight)
    assert model.modaq_info["formats"] == {"vision": "w8a8", "projector": "none", "language": "w3a16"}


def _linear_from(weight):
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    lin.weight = nn.Parameter(weight.clone())
    return W3A16Linear.from_linear(lin)


def test_quantized_model_stays_close_to_fp_and_round_trips(tmp_path):
    model, processor = tiny_vlm("llava_onevision")
    fp, _ = tiny_vlm("llava_onevision")
    batch = _inputs(model)
    api.quantize_rtn_(model, "w4a16", vision_format="w4a8", projector_format="w8a8")
    with torch.no_grad():
        y, y_fp = model(**batch).logits, fp(**batch).logits
        rel = ((y - y_fp).norm() / y_fp.norm()).item()
    assert 0 < rel < 0.2
    loaded = api.load_quantized(api.save_quantized(model, tmp_path / "q", processor))
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, y)


def test_online_hadamard_only_on_the_named_layers():
    model, _ = tiny_vlm("qwen2_vl")
    fp, _ = tiny_vlm("qwen2_vl")
    api.quantize_rtn_(model, "w4a4", rotation="hadamard", rotation_layers=("o_proj", "down_proj"))
    lang = _stage_linears(model)["language"]
    assert all(isinstance(m, W4A4Linear) for m in lang.values())
    rotated = {n for n, m in lang.items() if m.hadamard_signs is not None}
    assert rotated == {n for n in lang if n.endswith(("o_proj", "down_proj"))} and rotated
    assert model.modaq_info["config"]["rotation"] == "hadamard"
    # the rotation is folded into the weight: the rotated module still computes ~ the FP Linear
    name = sorted(n for n in rotated if n.endswith("down_proj"))[0]
    x = torch.randn(6, lang[name].in_features)
    ref = fp.get_submodule(name)(x)
    assert ((lang[name](x) - ref).norm() / ref.norm()).item() < 0.3


def test_unsupported_linears_are_skipped_and_listed():
    model, _ = tiny_vlm("qwen2_vl", text_intermediate_size=192)  # down_proj K = 192, not a multiple of 128
    swapped = api.quantize_rtn_(model, "w4a16")
    skipped = model.modaq_info["skipped"]
    assert skipped and all(n.endswith("down_proj") and "group_size" in why for n, why in skipped.items())
    assert not set(skipped) & set(swapped)
    assert all(type(model.get_submodule(n)) is nn.Linear for n in skipped)


def test_errors_name_the_argument():
    model, _ = tiny_vlm("qwen2_vl")
    with pytest.raises(ValueError, match="vision_format"):
        api.quantize_rtn_(model, "w4a8", vision_format="w5a5")
    with pytest.raises(ValueError, match="format"):
        api.quantize_rtn_(model, "int4")
    with pytest.raises(ValueError, match="group_size"):
        api.quantize_rtn_(model, "w4a16", group_size=32)
    with pytest.raises(ValueError, match="rotation"):
        api.quantize_rtn_(model, "w4a4", rotation="kron")
    with pytest.raises(TypeError, match="rotation_layers"):
        api.quantize_rtn_(model, "w4a4", rotation="hadamard", rotation_layers="down_proj")
    bad, _ = tiny_vlm("qwen2_vl", text_intermediate_size=200)  # 200 = 8 * 25: no Hadamard order
    with pytest.raises(ValueError, match="rotation: .*down_proj .in_features 200"):
        api.quantize_rtn_(bad, "w4a4", rotation="hadamard")
    assert not any(isinstance(m, QuantLinear) for m in bad.modules())
    with pytest.raises(ValueError, match="unsupported VLM family"):
        api.quantize_rtn_(nn.Linear(4, 4), "w4a16")
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # failed calls changed nothing
