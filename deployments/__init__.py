"""The three pipeline stages (preprocess, inference, postprocess) and their numeric cores.

Modules without a Ray import (image_codec, preprocessing, postprocessing, model_spec,
onnx_backend) hold all numeric work; the Ray Serve classes in preprocess/inference/
postprocess are thin wrappers around them.
"""
