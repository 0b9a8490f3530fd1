"""Serving side: the one inference path (core's session on onnxruntime or OpenVINO, pre/post-processing) and the
BentoML service.

Nothing here imports torch or onnxsim: the served Bento stays small.
"""
