"""Rotation-based quantization: computation-invariant preparation of the residual streams
(prepare.py), FlatQuant-style learnable transforms (transforms.py) and their block-wise training
(train.py).  The methods that use them live in calib/methods/quarot.py and flatquant.py."""
from .prepare import PreparedModel, prepare_model, stream_rotation

__all__ = ["PreparedModel", "prepare_model", "stream_rotation"]
