"""The package version, in a module of its own so that low modules (checkpoints, the CLI) read
it without importing the package's lazy public face. Kept equal to ``pyproject.toml``'s."""

__version__ = "0.1.0"
