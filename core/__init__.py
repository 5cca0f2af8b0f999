"""The bottom layer: pure code with no Ray and nothing of ours above it.

Image decoding, letterboxing, YOLO decoding and NMS, the model description read from the ONNX
file, the ONNX Runtime backend, a predict request's parameters, the one table of errors, and
the whole pipeline in one process (`LocalPipeline`). Unit-tested without a cluster.
"""
