"""The shared contract every stage imports and that imports no stage: the model card, preprocessing, image
decoding, the ONNX classifier runtime, CPU detection, artifact names and atomic file writing."""
