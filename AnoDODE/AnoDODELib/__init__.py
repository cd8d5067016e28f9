"""AnoDODE engine: unsupervised brain-MRI anomaly detection with a diffusion-ODE likelihood over
multi-scale features (after Hu & Jin, arXiv 2310.06420). Never imports slicer or qt."""

__version__ = "0.1.0"

__all__ = ["__version__"]
