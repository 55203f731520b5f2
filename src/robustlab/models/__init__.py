"""Model architectures (:mod:`.zoo`) and feature-denoising blocks (:mod:`.denoise`).

``build_model(name, num_classes, in_channels, **options)`` builds a registered architecture.
"""

from .bottleneck import BottleneckBlock
from .denoise import OPS, BilateralFilter, DenoiseBlock, MeanFilter, MedianFilter, NonLocalMeans
from .zoo import ACTIVATIONS, MLP, MODELS, BasicBlock, Normalize, ResNet18, SmallCNN, build_model, make_activation

__all__ = [
    "ACTIVATIONS", "MLP", "MODELS", "OPS", "BasicBlock", "BilateralFilter", "BottleneckBlock", "DenoiseBlock", "MeanFilter",
    "MedianFilter", "NonLocalMeans", "Normalize", "ResNet18", "SmallCNN", "build_model", "make_activation",
]
