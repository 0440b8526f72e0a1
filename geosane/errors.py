"""The one exception GeoSANE raises for bad input: the CLI prints its message and exits non-zero."""


class GeoSANEError(Exception):
    """A problem with the user's input or environment, with a message that names it."""
