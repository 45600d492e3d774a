"""Finding and reading checkpoints of both published layouts into the modules of ``models``."""
