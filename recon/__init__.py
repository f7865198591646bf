"""recon: streaming 3D reconstruction — an endless video in, a camera trajectory and a global 3D map out,
live, on bounded memory."""

__version__ = "0.1.0"
