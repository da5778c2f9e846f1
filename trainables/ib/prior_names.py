"""Names of the registered priors, importable without torch (config validation on a head node).

tests/test_ib_priors.py checks this list equals the keys of trainables.ib.priors.PRIORS.
"""
PRIOR_NAMES = ("standard_normal", "learnable_gaussian", "mog", "vamp")
