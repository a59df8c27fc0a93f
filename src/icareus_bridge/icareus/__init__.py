"""icareus package."""
