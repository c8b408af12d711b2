"""The benchmark of a running system (``fulfil bench``): see ``run``."""
