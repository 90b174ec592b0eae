"""Mask types, algebra, the file format, import of the originals' files, and enforcement."""

from ticketlab.masks.enforce import FitReport, MaskEnforcer, apply_mask, check_mask_fits
from ticketlab.masks.fingerprint import fingerprint
from ticketlab.masks.gates import StructuredGates, apply_structured_mask
from ticketlab.masks.importers import ImportReport, import_original_mask
from ticketlab.masks.io import Mask, load_mask, read_header, save_mask
from ticketlab.masks.provenance import Provenance, TensorInfo
from ticketlab.masks.structured import StructuredMask
from ticketlab.masks.unstructured import UnstructuredMask

__all__ = [
    "FitReport",
    "ImportReport",
    "Mask",
    "MaskEnforcer",
    "Provenance",
    "StructuredGates",
    "StructuredMask",
    "TensorInfo",
    "UnstructuredMask",
    "apply_mask",
    "apply_structured_mask",
    "check_mask_fits",
    "fingerprint",
    "import_original_mask",
    "load_mask",
    "read_header",
    "save_mask",
]
