"""Layer 1, data: from a user's files to the prepared uint8 store and back out as batches.

datasets/ (one parser per dataset layout), faces (MTCNN detection and alignment),
prepare (`poi prepare`), store (the prepared folder, read and written), noise (label
flips), preprocess (the model's normalised input), loader (batches from the store).
May import core only.
"""
