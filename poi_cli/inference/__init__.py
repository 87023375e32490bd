"""Layer 3, inference: what runs trained models. May import core, data and model, never train.

predict (`poi predict`: faces in images), evaluate (`poi evaluate`), audit (`poi audit`),
report (`poi report`), export (`poi export`), visualize (pictures of predictions),
calibrate (`poi calibrate`), clean (`poi clean`: an audit made into a label file), serve
(`poi serve`: the HTTP API, micro-batched over one Predictor).
"""
