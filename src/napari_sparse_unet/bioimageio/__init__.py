"""bioimage.io model packages: :mod:`.export` writes one (description, test tensors, README,
validation); :mod:`.network` is the TorchScript network it holds (normalisation, halo and
U-Net) and its size rules.  Needs the optional ``bioimageio`` extra; nothing is imported
with this package.
"""
