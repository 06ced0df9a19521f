"""r3p evaluation package."""
