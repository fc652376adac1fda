"""advbook: the tested library behind the companion book on sample-level adversarial vulnerability.

Layers, each importing only the ones below it (``tests/test_layers.py`` enforces the order):

* ``core``        cache, checkpoints, seeds and devices, tensor helpers, paths
* ``data``        datasets as uint8 tensors (CIFAR-10, SVHN, CIFAR-100, Tiny ImageNet, synthetic)
* ``models``      classifiers with normalisation inside; batched prediction
* ``attacks``     threat models, PGD, DeepFool, sign ascent, MD, SPSA
* ``training``    objectives (AT, TRADES, MART, GAIRAT, MAIL-AT, VIR, KD), the cached training loop, defenses
* ``evaluation``  the evaluation suite and per-sample robustness flags of several models
* ``analysis``    sample-level measures (DDB, steps, frequency, trust), distillation, the toy problem,
                  statistics and the claims engine
* ``book``        what the pages call: parameter schemas and profiles, runs and provenance, artifacts,
                  tables, figures, the command line
"""
__version__ = "0.2.0"
