"""flowsr: flow-based generative image super-resolution with a learned prior, at any scale."""

__version__ = "0.1.0"
