"""memstack: composable commands for the memory of AI systems."""

__version__ = "0.1.0"
