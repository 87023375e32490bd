"""Layer 0, core: what every other layer may use. Imports nothing else of poi_cli.

atomic (every file poi writes, numbered output folders), errors (PoiError, the base of
every one-line user error), manifests (the facts in data_manifests/: classes, the AU
prior table, regions), runtime (devices, bf16 autocast, torchrun processes).
"""
