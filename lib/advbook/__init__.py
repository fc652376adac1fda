"""advbook: the tested library behind the companion book on sample-level adversarial vulnerability.

Modules, one job each: ``data`` (datasets as tensors), ``models`` (classifiers with
normalisation inside), ``threats`` and ``attacks`` (PGD, DeepFool), ``train`` (cached,
resumable training), ``vulnerability`` (sample-level measures), ``experiment`` (profiles,
parameters, provenance), ``report`` and ``plots`` (artifacts and figures), ``cache``.
"""
__version__ = "0.1.0"
