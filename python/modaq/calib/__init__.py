"""The calibrator: model adapters, calibration data, block-wise engine, methods, modality weights.

    from modaq.calib import QuantConfig, calibrate, load_calibration
    samples = load_calibration("synthetic:32", processor)
    result = calibrate(model, samples, QuantConfig(method="mbq", format="w4a8", vision_format="w8a8"))
"""
from .adapters import SUPPORTED_FAMILIES, get_adapter
from .config import METHODS, QuantConfig
from .data import CalibSample, load_calibration
from .engine import Engine, calibrate
from .modality import ModalityStats, ModalityWeights
from .report import CalibrationResult

__all__ = ["QuantConfig", "METHODS", "calibrate", "Engine", "CalibrationResult", "CalibSample",
           "load_calibration", "get_adapter", "SUPPORTED_FAMILIES", "ModalityWeights", "ModalityStats"]
