"""The Hydra configs, shipped in the package as `tl_lightning.conf` (see pyproject.toml): `tl-lightning train` finds
them in an installed package as in this checkout. Nothing here is imported for its code."""
