"""r3p preprocessing package."""
