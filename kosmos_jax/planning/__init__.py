"""Memory and FLOP planning of a training run for devices this host does not have (plan.py)."""
