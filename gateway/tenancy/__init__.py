"""Organizations, their policy and settings, and their staff accounts."""
