"""Computation-invariant preparation (calib/rotation/prepare.py): every folding step, the
LayerNorm -> RMSNorm conversion and the residual-stream rotations keep the FP model's logits
(fp32, relative error < 1e-3) on the tiny model of every family."""
import copy

import pytest
import torch
from torch import nn

from modaq.calib import get_adapter, load_calibration
from modaq.calib.rotation import prepare as prep
from modaq.calib.tiny import tiny_vlm
from modaq.nn import RMSNorm, Rotation

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "internvl", "llava_onevision", "llava")
# how each family's vision stream is handled: converted to RMSNorm / already RMSNorm /
# LayerNorms kept with a mean-preserving rotation / not rotated
VISION = {"qwen2_vl": "converted", "qwen2_5_vl": "rms", "internvl": "mean", "llava_onevision": "mean",
          "llava": None}


def _randomize_affines(model):
    """Non-trivial LayerNorm biases and layer scales, so that every fold does something."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1 and "norm" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
            if "lambda_" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    model, processor = tiny_vlm(request.param, outliers=True)
    _randomize_affines(model)
    samples = load_calibration("synthetic:2", processor, 2)
    with torch.no_grad():
        ref = [model(**s.inputs).logits for s in samples]
    return request.param, model, samples, ref


def _max_rel_error(model, samples, ref) -> float:
    with torch.no_grad():
        return max(float((model(**s.inputs).logits - r).norm() / r.norm()) for s, r in zip(samples, ref))


def _streams(model, family):
    adapter = get_adapter(model)
    vision = adapter.vision_stream()
    assert (vision is None) == (VISION[family] is None), adapter.stream_limitation
    return adapter, [s for s in (vision, adapter.language_stream()) if s is not None]


def test_each_folding_step_keeps_the_outputs(family_model):
    family, fp, samples, ref = family_model
    model = copy.deepcopy(fp)
    adapter, streams = _streams(model, family)
    prep.untie_lm_head(model)
    assert _max_rel_error(model, samples, ref) < 1e-6
    for step in (prep.fold_layer_scales, prep.fold_norms):
        for stream in streams:
            step(model, stream)
        assert _max_rel_error(model, samples, ref) < 1e-3, step.__name__
    for stream in streams:  # the norms are now unit / zero-bias; layer scales are ones
        for r in stream.readers:
            norm = model.get_submodule(r.norm)
            assert bool((norm.weight == 1).all()) and (getattr(norm, "bias", None) is None or not norm.bias.any())
    converted = [n for s in streams if s.centerable for n in prep.convert_layernorms(model, s)]
    assert bool(converted) == (VISION[family] == "converted")
    assert all(isinstance(model.get_submodule(n), RMSNorm) for n in converted)
    assert _max_rel_error(model, samples, ref) < 1e-3


def test_random_orthogonal_rotation_of_every_stream_keeps_the_outputs(family_model):
    family, fp, samples, ref = family_model
    model = copy.deepcopy(fp)
    adapter, streams = _streams(model, family)
    info = prep.prepare_model(model, adapter, rotate=False)
    for i, stream in enumerate(streams):
        layer_norms = any(prep.norm_kind(model.get_submodule(r.norm)) == "layer" for r in stream.readers)
        assert layer_norms == (stream.kind == "vision" and VISION[family] == "mean")
        q = prep.random_orthogonal(stream.dim, seed=10 + i)
        if layer_norms:
            with pytest.raises(ValueError, match="mean-preserving"):
                prep.rotate_stream(copy.deepcopy(model), stream, q)
            q = prep.keep_mean(q, stream.dim)
        prep.rotate_stream(model, stream, q)
        assert _max_rel_error(model, samples, ref) < 1e-3, stream.kind
    assert info.rotated == {"vision": False, "language": False}  # rotate=False: folding and conversion only


def test_hadamard_preparation_keeps_the_outputs_and_lists_the_readers(family_model):
    family, fp, samples, ref = family_model
    model = copy.deepcopy(fp)
    adapter = get_adapter(model)
    info = prep.prepare_model(model, adapter, rotate=True, seed=5)
    assert _max_rel_error(model, samples, ref) < 1e-3
    assert info.rotated["language"] and info.rotated["vision"] == (VISION[family] is not None)
    lang = adapter.language_stream()
    assert lang.reader_linears() <= info.reader_linears
    assert any(n.endswith("lm_head") for n in info.reader_linears)
    if family == "llava":
        assert "pre_layrnorm" in info.notes[0]
    # the decoder's embedding and head fold different matrices: untied (InternVL's tiny model ties them)
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert not model.config.tie_word_embeddings


def test_rotating_before_folding_is_refused():
    model, _ = tiny_vlm("qwen2_vl", outliers=True)
    adapter = get_adapter(model)
    with pytest.raises(ValueError, match="still has an affine"):
        prep.rotate_stream(model, adapter.language_stream(), Rotation.random_hadamard(128, 0))
    with pytest.raises(ValueError, match="streams: expected"):
        prep.prepare_model(model, adapter, streams=("audio",))


def test_rmsnorm_is_a_layernorm_on_centered_inputs_and_commutes_with_rotations():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 64, generator=gen) * 3
    xc = x - x.mean(-1, keepdim=True)
    ln, rms = nn.LayerNorm(64, eps=1e-5), RMSNorm(64, eps=1e-5)
    torch.testing.assert_close(rms(xc), ln(xc), rtol=1e-5, atol=1e-5)
    q = prep.random_orthogonal(64, 1).float()
    torch.testing.assert_close(rms(x @ q), rms(x) @ q, rtol=1e-5, atol=1e-5)
    mq = prep.keep_mean(Rotation.random_hadamard(64, 2), 64).float()  # a LayerNorm commutes with it
    torch.testing.assert_close(ln(x @ mq), ln(x) @ mq, rtol=1e-4, atol=1e-5)
    assert prep.preserves_mean(mq.double(), 64) and not prep.preserves_mean(q.double(), 64)
    assert RMSNorm.from_config(rms.norm_config()).eps == 1e-5
    with pytest.raises(ValueError, match="dim: expected a positive int"):
        RMSNorm(0)
