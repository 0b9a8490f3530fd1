"""Serving side: the one inference runtime (ONNX Runtime session, pre/post-processing) and the BentoML service.

Nothing here imports torch or onnxsim: the served Bento stays small.
"""
