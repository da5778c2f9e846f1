"""`ibft` verbs that run in one process without Ray (train, eval, check, memorization)."""
