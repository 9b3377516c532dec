"""Datasets: manifest scan, Ray Data pipeline, augmentation, and a generator of small multitrack sets."""
