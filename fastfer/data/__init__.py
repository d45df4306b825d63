"""Datasets, labels, transforms and sampling.

Every reader returns ``(image, canonical_label)`` with the image an RGB ``uint8 [3, H, W]`` tensor (before its
``transform``) and the label in :data:`fastfer.labels.EXPRESSIONS` order. OpenCV is imported only when an
image is decoded or drawn.
"""
from fastfer.data.affectnet import AffectNet
from fastfer.data.base import CorruptImageError, DatasetFormatError, EmptySplitError, FERDataset, read_image
from fastfer.data.expw import ExpW
from fastfer.data.fer2013 import FER2013
from fastfer.data.ferplus import FERPlus, majority_vote
from fastfer.data.folder import ImageFolderFER
from fastfer.labels import (
                                 EXPRESSIONS,
                                 NATIVE_ORDERS,
                                 UnknownLabelError,
                                 label_names,
                                 native_to_canonical,
                                 normalize_name,
                                 order_map,
                                 permute_classifier_rows,
)
from fastfer.data.listfile import LabelList
from fastfer.data.rafdb import RAFDB
from fastfer.data.sampler import ClassBalancedSampler
from fastfer.data.sfew import SFEW
from fastfer.data.split import train_val_split
from fastfer.data.synthetic import SyntheticExpressions, save_contact_sheet
from fastfer.data.transforms import build_transforms

__all__ = [
    "EXPRESSIONS", "NATIVE_ORDERS", "AffectNet", "ClassBalancedSampler", "CorruptImageError", "DatasetFormatError",
    "EmptySplitError", "ExpW", "FER2013", "FERDataset", "FERPlus", "ImageFolderFER", "LabelList", "RAFDB", "SFEW",
    "SyntheticExpressions", "UnknownLabelError", "build_transforms", "label_names", "majority_vote",
    "native_to_canonical", "normalize_name", "order_map", "permute_classifier_rows", "read_image",
    "save_contact_sheet", "train_val_split",
]
