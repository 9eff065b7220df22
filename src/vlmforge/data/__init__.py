"""Data layer: record format, converters, checks, image loading, tokenisation, datasets."""
