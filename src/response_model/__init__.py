"""response-model: response and resistance of advanced HCC to targeted therapy and checkpoint inhibitors."""

__version__ = "0.1.0"
