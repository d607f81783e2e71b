"""ucloud package."""
