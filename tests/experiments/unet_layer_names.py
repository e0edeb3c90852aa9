"""The stable layer names the U-Net experiments must report, in forward order."""

SEED_LAYERS = [
    "enc1",
    "pool1",
    "enc2",
    "pool2",
    "bottleneck",
    "up2",
    "cat2",
    "dec2",
    "up1",
    "cat1",
    "out",
]
NO_SKIP_LAYERS = ["enc1", "pool1", "enc2", "pool2", "bottleneck", "up2", "dec2", "up1", "out"]
