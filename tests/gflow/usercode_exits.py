"""A model factory that ends the process, as a careless script would."""

import sys


def factory():
    sys.exit(0)
