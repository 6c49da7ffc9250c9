"""modaq.api: quantize -> save_quantized -> load_quantized round trips, atomic saves, errors."""
import json
import os

import pytest
import torch

from modaq import api
from modaq.calib import QuantConfig, load_calibration
from modaq.calib.tiny import tiny_vlm
from modaq.nn import QuantLinear


pytestmark = pytest.mark.usefixtures("one_thread")


def _quantized(family, config):
    model, processor = tiny_vlm(family, outliers=True)
    samples = load_calibration("synthetic:4", processor, 4)
    api.quantize(model, processor, config, samples)
    return model, processor, samples


@pytest.mark.parametrize("family,config", [
    ("qwen2_vl", QuantConfig(method="mbq", format="w4a8", vision_format="w8a8", progress=False)),
    ("llava", QuantConfig(method="awq", format="w3a16", vision_format="w4a8", projector_format="none", progress=False)),
    ("internvl", QuantConfig(method="gptq", format="w4a16", vision_format="w4a4", progress=False)),
])
def test_save_load_round_trip_gives_identical_logits(tmp_path, family, config):
    model, processor, samples = _quantized(family, config)
    out = api.save_quantized(model, tmp_path / "q", processor)
    meta = api.read_quant_config(out)
    assert meta["method"] == config.method and meta["formats"]["language"] == config.format
    assert meta["layers"] == api.quant_layers(model) and meta["config"]["group_size"] == 128
    loaded = api.load_quantized(out)
    assert {n: type(m) for n, m in loaded.named_modules() if isinstance(m, QuantLinear)} == \
        {n: type(m) for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    with torch.no_grad():
        for s in samples[:2]:
            assert torch.equal(model(**s.inputs).logits, loaded(**s.inputs).logits)
    gen = loaded.generate(**samples[0].inputs, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] == samples[0].input_ids.shape[1] + 4
    ref = model.generate(**samples[0].inputs, max_new_tokens=4, do_sample=False)
    assert torch.equal(gen, ref)
    # a directory saved before activation clipping existed (no act_clip_ratio) loads with 1.0
    path = os.path.join(out, api.CONFIG_NAME)
    with open(path) as f:
        old = json.load(f)
    assert [cfg.pop("act_clip_ratio", 1.0) for cfg in old["layers"].values()] == [1.0] * len(old["layers"])
    with open(path, "w") as f:
        json.dump(old, f)
    loaded = api.load_quantized(out)
    with torch.no_grad():
        assert torch.equal(model(**samples[0].inputs).logits, loaded(**samples[0].inputs).logits)


def test_quantize_from_a_spec_string_and_config_errors():
    model, processor = tiny_vlm("llava")
    model, result = api.quantize(model, processor, QuantConfig(method="rtn", samples=2, progress=False),
                                 "synthetic", return_result=True)
    assert model.modaq_info["formats"] == {"vision": "w4a8", "projector": "w4a8", "language": "w4a8"}
    assert len(result.blocks) == 5
    with pytest.raises(ValueError, match="processor: needed"):
        api.quantize(tiny_vlm("llava")[0], None, QuantConfig(progress=False), "synthetic")
    with pytest.raises(TypeError, match="config: expected a modaq QuantConfig"):
        api.quantize(model, processor, {"method": "rtn"}, "synthetic")
    with pytest.raises(TypeError, match="calib_data"):
        api.quantize(model, processor, QuantConfig(progress=False), [1, 2])


def test_save_is_atomic_and_refuses_to_clobber(tmp_path):
    model, processor, _ = _quantized("llava", QuantConfig(method="rtn", format="w8a8", progress=False))
    target = tmp_path / "out"

    class BrokenProcessor:
        def save_pretrained(self, path):
            with open(os.path.join(path, "half_written.json"), "w") as f:
                f.write("{")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        api.save_quantized(model, target, BrokenProcessor())
    assert os.listdir(tmp_path) == []  # neither the target nor a temporary directory is left
    api.save_quantized(model, target, processor)
    with pytest.raises(ValueError, match="already exists"):
        api.save_quantized(model, target)
    before = api.read_quant_config(target)
    api.save_quantized(model, target, overwrite=True)
    assert api.read_quant_config(target)["layers"] == before["layers"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_save_and_load_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no modaq modules"):
        api.save_quantized(tiny_vlm("llava")[0], tmp_path / "fp")
    with pytest.raises(FileNotFoundError, match="quant_config.json"):
        api.load_quantized(tmp_path)
    (tmp_path / "quant_config.json").write_text(json.dumps({"architecture": "NotAModel", "layers": {}}))
    with pytest.raises(FileNotFoundError, match="modaq_model.safetensors"):
        api.load_quantized(tmp_path)
