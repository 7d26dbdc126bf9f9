"""Data lifecycle: retention and data-subject exports."""
