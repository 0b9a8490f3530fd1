"""The anchor of the serving benchmarks: the BentoML service a user would write by hand around the same model file.

Pillow decode, resize + center crop, normalize, one ONNX Runtime session with SMALLNETS_PLAIN_THREADS threads
(default 2), no batching, no admission, no deadline: one image per ``/classify`` call (multipart field ``image``,
the same upload `smallnets bench-http` sends). `python -m smallnets.benchmarks.goodput MODEL` serves it and
`smallnets serve` in turn and loads both alike. Serve it alone with
    SMALLNETS_PLAIN_MODEL=model.onnx bentoml serve smallnets.benchmarks.plain_service:PlainClassifier --port 3100
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort
from PIL import Image

from smallnets.core.metadata import ModelCard

ENV_MODEL = "SMALLNETS_PLAIN_MODEL"
ENV_THREADS = "SMALLNETS_PLAIN_THREADS"


@bentoml.service(name="plain_classifier", workers=1, logging={"access": {"enabled": False}})
class PlainClassifier:
    def __init__(self) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get(ENV_THREADS, "2"))
        self.session = ort.InferenceSession(os.environ[ENV_MODEL], options, providers=["CPUExecutionProvider"])
        card = ModelCard.from_metadata_props(self.session.get_modelmeta().custom_metadata_map)
        self.labels, self.config = card.labels, card.preprocessing
        self.input = self.session.get_inputs()[0].name

    @bentoml.api(route="/classify")
    def classify(self, image: Image.Image) -> dict:
        config = self.config
        picture = image.convert("RGB")
        scale = config.resize / min(picture.size)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.BILINEAR)
        left, top = (picture.width - config.crop) // 2, (picture.height - config.crop) // 2
        picture = picture.crop((left, top, left + config.crop, top + config.crop))
        pixels = (np.asarray(picture, dtype=np.float32) / 255.0 - config.mean) / config.std
        logits = self.session.run(None, {self.input: pixels.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        best = np.argsort(-logits)[:5]
        return {"predictions": [{"class_id": int(i), "label": self.labels[i], "logit": float(logits[i])} for i in best]}
