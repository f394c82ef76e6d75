"""`python -m tl_lightning <command> [args]`: the same entry as the `tl-lightning` console script (`app.cli`)."""

from tl_lightning.app.cli import main

main()
