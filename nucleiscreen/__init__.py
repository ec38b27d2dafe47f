"""nucleiscreen: nuclei segmentation and hit calling for genome-wide imaging screens."""

__version__ = "0.1.0"
