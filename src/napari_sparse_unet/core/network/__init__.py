"""The network and its features: the filter bank, the U-Net, the per-voxel head."""
