"""`ibft` verbs that drive the search (tune, report); each module has add_arguments and run."""
