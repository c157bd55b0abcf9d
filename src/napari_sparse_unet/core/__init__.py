"""Headless engine: numpy + torch only.  Importing it never imports Qt or napari."""
