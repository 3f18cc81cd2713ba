"""The source registry: which exporters exist and how to trust them."""
