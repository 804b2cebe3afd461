"""Inference handler for the example model: a 4-feature linear classifier."""

import json
import struct
from pathlib import Path


def model_fn(model_dir):
    """Load the weight matrix and bias from model.safetensors."""
    raw = Path(model_dir, "model.safetensors").read_bytes()
    header_size = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8:8 + header_size])
    data = raw[8 + header_size:]

    def tensor(name):
        start, end = header[name]["data_offsets"]
        return list(struct.unpack_from(f"<{(end - start) // 4}f", data, start))

    weight = tensor("weight")
    return [weight[row * 4:row * 4 + 4] for row in range(3)], tensor("bias")


def predict_fn(features, model):
    """Return the index of the class with the highest score for 4 features."""
    weight, bias = model
    scores = [sum(w * x for w, x in zip(row, features)) + b for row, b in zip(weight, bias)]
    return scores.index(max(scores))
