"""Layer 3, deploy: labelling a user's images and videos (`pip install poi-fer`, no torch).
May import core and data (their torch-free modules), never torch, model, train or study.

predict (Predictor: files, folders, globs and videos in, records out; model choice),
pipeline (the stages: load, detect, align, run the model, build records; InputItem),
records (FaceRecord, the typed record of one face, and its CSV / DataFrame forms),
runner (OnnxRunner: an exported .onnx on ONNX Runtime; the ModelRunner protocol), overlap
(threads that load, detect and align ahead of the model), video (frames, tracks,
smoothing), tracking (IoU tracker, smoother), drawing (pictures of predictions),
visualize (`--save-vis` of images), video_vis (annotated video and timeline), serve
(`poi serve`, the HTTP API).
"""
