"""Adapters on tiny random models of every family: stage / block / group discovery, the modality
mask, and that folding an equalization scale into each group's producer keeps the block exact."""
import pytest
import torch
from torch import nn

from modaq.calib import SUPPORTED_FAMILIES, get_adapter, load_calibration
from modaq.calib.adapters.base import LinearGroup, complete_groups
from modaq.calib.capture import capture_stage
from modaq.calib.methods.base import GroupJob
from modaq.calib.methods.equalize import fold_scale
from modaq.calib.tiny import FAMILIES, LAYERS, tiny_vlm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on a shared 2-core box
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    model, processor = tiny_vlm(request.param)
    samples = load_calibration("synthetic:2", processor, 2)
    return request.param, model, samples


def test_every_tiny_family_is_supported():
    assert set(FAMILIES) <= set(SUPPORTED_FAMILIES)


def test_stages_blocks_and_groups(family_model):
    family, model, _ = family_model
    adapter = get_adapter(model)
    stages = adapter.stages()
    assert [s.kind for s in stages] == ["vision", "projector", "language"]
    assert [len(s.blocks) for s in stages] == [LAYERS, 1, LAYERS]
    for stage in stages:
        for name, block in zip(stage.names, stage.blocks):
            assert model.get_submodule(name) is block
            groups = adapter.groups(stage, block)
            linears = [n for n, m in block.named_modules() if isinstance(m, nn.Linear)]
            assert sorted(n for g in groups for n in g.linears) == sorted(linears)
    # the decoder's q/k/v share input_layernorm, gate/up share post_attention_layernorm
    lang = stages[2]
    groups = {g.linears: g for g in adapter.groups(lang, lang.blocks[0])}
    qkv = groups[("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")]
    assert qkv.producer == "input_layernorm" and qkv.producer_kind == "norm"
    assert groups[("mlp.gate_proj", "mlp.up_proj")].producer == "post_attention_layernorm"
    assert groups[("mlp.down_proj",)].producer == "mlp.up_proj"
    # GQA (2 kv heads of 4): o_proj cannot fold into v_proj
    assert groups[("self_attn.o_proj",)].producer is None


def test_modality_mask_marks_exactly_the_vision_positions(family_model):
    """Decoder block-0 inputs equal the token embeddings at text positions and differ from the
    image token's embedding at every masked position (the features were scattered there)."""
    family, model, samples = family_model
    adapter = get_adapter(model)
    lang = adapter.stages()[2]
    masks = [adapter.modality_mask(s.input_ids).reshape(-1) for s in samples]
    traces = capture_stage(model, lang, samples, torch.device("cpu"), torch.device("cpu"), masks)
    embed = model.get_input_embeddings()
    for sample, mask, trace in zip(samples, masks, traces):
        ids = sample.input_ids[0]
        assert mask.sum() > 0 and (~mask).sum() > 0
        assert torch.equal(mask, ids == adapter.image_token_id)
        hidden = trace.hidden.reshape(ids.numel(), -1)
        with torch.no_grad():
            tok = embed(ids)
        torch.testing.assert_close(hidden[~mask], tok[~mask], rtol=0, atol=0)
        assert (hidden[mask] - tok[mask]).abs().amax(-1).min() > 0


@torch.no_grad()
def test_folding_scales_into_producers_keeps_blocks_exact(family_model):
    family, model, samples = family_model
    adapter = get_adapter(model)
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    folded = 0
    for stage in adapter.stages():
        masks = [adapter.modality_mask(s.input_ids).reshape(-1) for s in samples] if stage.kind == "language" \
            else [None] * len(samples)
        traces = capture_stage(model, stage, samples, cpu, cpu, masks)
        for bi, block in enumerate(stage.blocks):
            ref = [tr.calls[bi].run(block, tr.hidden) for tr in traces]
            saved = {k: v.clone() for k, v in block.state_dict().items()}
            for g in adapter.groups(stage, block):
                if g.producer is None:
                    continue
                k = block.get_submodule(g.linears[0]).in_features
                s = torch.exp(torch.randn(k, generator=gen))  # scales spanning ~e^-3 .. e^3
                lins = {n: block.get_submodule(n) for n in g.linears}
                assert fold_scale(block, GroupJob(g, lins, None, {}), s)
                folded += 1
            out = [tr.calls[bi].run(block, tr.hidden) for tr in traces]
            for a, b in zip(ref, out):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
            block.load_state_dict(saved)
    assert folded >= 2 * LAYERS  # at least the decoder's norms took scales


def test_unknown_family_lists_supported():
    class Fake(nn.Module):
        config = type("C", (), {"model_type": "blip2"})()

    with pytest.raises(ValueError, match="blip2.*qwen2_vl.*llava.*internvl"):
        get_adapter(Fake())


def test_complete_groups_rejects_bad_names():
    block = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8))
    with pytest.raises(ValueError, match="'2' is not an nn.Linear"):
        complete_groups(block, [LinearGroup(("2",))])
    with pytest.raises(ValueError, match="weight of shape"):
        complete_groups(nn.Sequential(nn.LayerNorm(4), nn.Linear(8, 8)), [LinearGroup(("1",), "0", "norm")])
    with pytest.raises(ValueError, match="two LinearGroups"):
        complete_groups(block, [LinearGroup(("1",)), LinearGroup(("1",))])
    assert complete_groups(block, []) == [LinearGroup(("1",))]
