"""mddose: radiotherapy dose prediction with diffusion models (MD-Dose and the methods it is compared with)."""

from mddose.errors import MddoseError

__version__ = "0.1.0"
__all__ = ["MddoseError", "__version__"]
