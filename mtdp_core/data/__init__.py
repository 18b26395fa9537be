"""Data: reading images, preprocessing, task pools and samplers."""
