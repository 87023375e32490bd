"""Layer 1, data: from a user's files to the prepared uint8 store and back out as batches.

datasets/ (one parser per dataset layout), faces (image loading, 5-point alignment, the
detectors by name, MTCNN through facenet-pytorch), mtcnn (MTCNN run by ONNX Runtime: the
default detector, no torch), prepare (`poi prepare`), store (the prepared folder, read
and written), combined (several prepared folders read as one: `poi combine`), duplicates
(pixel-identical faces: face_digest, twins across splits), noise (label flips),
preprocess (the model's normalised input, in torch and in numpy), loader (batches from
the store), folds (subject-independent folds), video (decoding and sampling video
files). May import core only. faces, mtcnn, preprocess and video are part of the deploy
runtime: they import no torch at module level.
"""
