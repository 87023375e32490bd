"""Layer 0, core: what every other layer may use. Imports nothing else of poi_cli.

atomic (every file poi writes, numbered output folders, the output-is-an-input guard), locks
(one writer per output: flock claims, which a dead process lets go), errors (PoiError, the base of
every one-line user error), manifests (the facts in data_manifests/: classes, the AU
prior table, regions), schema (statuses, landmark names), runtime (devices, bf16
autocast, torchrun processes; the one module here that imports torch), metrics (confusion
matrix, recall, ROC AUC on arrays), threads (--threads for torch and ONNX Runtime),
outputs (ModelOutputs: what a model runner gives prediction, in numpy; PredictionRecipe:
how the reported probabilities are made), progress (the rich progress bar of every loop over
images or frames), layout (the names of the files poi writes into a prepared folder and a
run folder).
"""
