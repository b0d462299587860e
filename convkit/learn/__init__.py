"""Learned filters: LeNet-style conv nets trained on a folder of images."""
