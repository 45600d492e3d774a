"""The two kinds of error a user can act on; both are ``ValueError`` so callers can catch them together."""


class CheckpointError(ValueError):
    """A checkpoint file or folder cannot be used; the message names the file and what is wrong."""
