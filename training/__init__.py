"""r3p training package."""
