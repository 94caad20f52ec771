"""The exported detector: written as one SavedModel (`export`), loaded and checked (`load`), described (`card`)."""
