"""Data: sources, decoding, splitting, preprocessing, augmentation and loading."""
