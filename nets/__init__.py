"""YOLOv8 network, backbone freezing and weight loading."""
from nets.freeze import freeze_backbone
from nets.weights import infer_phi, load_weights
from nets.model import YoloV8, build_model

__all__ = ["YoloV8", "build_model", "freeze_backbone", "infer_phi", "load_weights"]
