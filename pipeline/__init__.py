"""r3p pipeline package."""
