"""ticketlab: lottery tickets in pre-trained transformers.

The public Python API, layer by layer:

- :mod:`ticketlab.models`: which matrices, heads and FFN units an encoder has (:class:`EncoderAdapter`)
  and model loading.
- :mod:`ticketlab.masks`: :class:`UnstructuredMask`, :class:`StructuredMask`, the mask file format
  (:func:`save_mask`, :func:`load_mask`) and enforcement while training (:class:`MaskEnforcer`).
- :mod:`ticketlab.pruning`: how masks are chosen (:func:`prune`, the method registry).
"""

__version__ = "0.1.0"

from ticketlab.errors import TicketlabError  # noqa: E402

__all__ = ["TicketlabError", "__version__"]
