"""``python -m acestep_core generate …``: see ``acestep_core.cli``."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
