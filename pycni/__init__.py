"""pycni: CNI plugins for Kubernetes nodes.

The package is imported by every plugin start, so it imports nothing itself.
"""

__version__ = "0.1.0"
