"""2D evidence: COCO annotations (`coco`), the z-buffer rasterizer and part maps (`raster`)."""
