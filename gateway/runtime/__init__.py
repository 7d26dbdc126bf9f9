"""The composition root: configuration, the embedded database, the CLI and the app wiring."""
