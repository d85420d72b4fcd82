"""Pictures: PNG writing, keypoint/skeleton drawing, overlays, palettes and grids (`images`)."""
