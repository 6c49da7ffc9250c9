"""QuantConfig defaults / validation and the ModalityWeights coefficients."""
import pytest

from modaq.calib import QuantConfig
from modaq.formats import get_format
from modaq.calib.modality import ModalityStats, ModalityWeights


def test_defaults_follow_the_papers():
    cfg = QuantConfig()
    assert (cfg.method, cfg.group_size, cfg.samples, cfg.beta, cfg.grid) == ("mbq", 128, 128, 0.1, 20)
    assert cfg.loss_kind() == "mae" and cfg.modality_weights().kind == "mbq"
    assert QuantConfig(method="awq").loss_kind() == "mse" and QuantConfig(method="awq").modality_weights().kind == "none"
    assert [cfg.format_for(c).name for c in ("vision", "projector", "language")] == ["w4a8"] * 3
    mq = QuantConfig(format="w4a8", vision_format="w8a8")  # the MQuant setting
    assert (mq.format_for("vision").name, mq.format_for("projector").name, mq.format_for("language").name) == \
        ("w8a8", "w8a8", "w4a8")
    assert QuantConfig(vision_format="none", projector_format="w4a16").format_for("vision") is None
    w3, w4a8 = get_format("w3a16"), get_format("w4a8")
    assert QuantConfig(method="awq").clip_for(w3) and QuantConfig(method="mbq").clip_for(w3)
    assert not QuantConfig(method="awq").clip_for(w4a8) and not QuantConfig(method="smoothquant").clip_for(w3)
    assert not QuantConfig(method="awq", clip=False).clip_for(w3)
    assert QuantConfig(format="w4a16").group_size_for(QuantConfig(format="w4a16").format_for("language")) == 128


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="spinquant"), "method: expected one of"),
    (dict(method="flatquant", format="w4a16"), "flatquant learns transforms"),
    (dict(method="flatquant", vision_format="w3a16"), "vision format w3a16 is weight-only"),
    (dict(rotation_weights="awq"), "rotation_weights: expected one of"),
    (dict(language_calibration="c4"), "language_calibration: expected one of"),
    (dict(flat_epochs=0), "flat_epochs: expected a positive int"),
    (dict(flat_lr=0.0), "flat_lr: expected a positive float"),
    (dict(format="w5a5"), "format: expected one of"),
    (dict(format="none"), "format: the language decoder format must be a quantized format"),
    (dict(vision_format="int8"), "vision_format: expected one of"),
    (dict(group_size=96), "group_size: expected one of"),
    (dict(samples=0), "samples: expected a positive int"),
    (dict(modality="gradient"), "modality: expected one of"),
    (dict(loss="l1"), "loss: expected one of"),
    (dict(beta=0.0), "beta: expected a value in"),
    (dict(fixed_weights=(0.0, 0.0)), "fixed weights"),
    (dict(clip_min_ratio=1.5), "clip_min_ratio"),
    (dict(visual_token_budget=-3), "visual_token_budget"),
    (dict(device="tpu:0"), "device"),
])
def test_bad_config_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_modality_coefficients():
    st = ModalityStats(n_vision=300, n_text=100, out_scale_vision=4.0, out_scale_text=0.5,
                       grad_vision=0.01, grad_text=0.2)
    n = 400
    assert ModalityWeights("none").coefficients(st) == (1 / n, 1 / n)
    assert ModalityWeights("mbq").coefficients(st) == pytest.approx((0.01 / n, 0.2 / n))
    assert ModalityWeights("fixed", vision=0.1, text=1.0).coefficients(st) == pytest.approx((0.1 / n, 1 / n))
    # scale ratio (rotation paper eq. 11-14): lambda_v = beta * S_txt / S_vis, per-modality means
    lam = 0.1 * 0.5 / 4.0
    assert ModalityWeights("scale_ratio", beta=0.1).coefficients(st) == pytest.approx((lam / 300, 1 / 100))
    # one modality only (vision tower) or no gradient reaching the Linear: plain average
    vision_only = ModalityStats(n_vision=50, n_text=0, grad_vision=0.3, grad_text=None)
    for kind in ("mbq", "scale_ratio", "fixed"):
        assert ModalityWeights(kind).coefficients(vision_only) == (1 / 50, 1 / 50)
    dead = ModalityStats(10, 10, 1.0, 1.0, 0.0, 0.0)
    assert ModalityWeights("mbq").coefficients(dead) == (1 / 20, 1 / 20)
    with pytest.raises(ValueError, match="saw no tokens"):
        ModalityWeights("none").coefficients(ModalityStats(0, 0))
