"""Exported forms of a model beyond its safetensors weights: ONNX (onnx.py), each checked
against PyTorch before it is written beside model.safetensors and recorded in config.json."""
