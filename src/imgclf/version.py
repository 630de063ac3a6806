"""The version of imgclf (also `imgclf.__version__`)."""

__version__ = "0.1.0"
