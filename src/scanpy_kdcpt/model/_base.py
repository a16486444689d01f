"""What the model's mixins need from :class:`~scanpy_kdcpt.KDCPT` (a typing ``Protocol``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from anndata import AnnData

    from ..module import KDCPTModule
    from ..results import Predictions
    from ._inputs import RnaInputs
    from ._transitions import TransitionState


class KDCPTLike(Protocol):
    """The attributes and methods of the model that the mixins (calibration, transitions, key
    genes, knockouts) use. :class:`~scanpy_kdcpt.KDCPT` provides them.
    """

    adata: AnnData
    module: KDCPTModule
    classes_: list[str]
    var_names_: list[str]
    data_type_: str
    temperature_: float
    extra_: dict
    validation_indices: np.ndarray | None
    is_trained_: bool
    #: the input strategy chosen at construction (genes, or genes + regulatory sites)
    _inputs: RnaInputs
    #: set by ``compute_transitions``
    transitions_: TransitionState | None

    @property
    def device(self) -> torch.device: ...

    def _check_if_trained(self, warn: bool = True, message: str = ...) -> bool: ...

    def _prepare_adata(self, adata: AnnData | None) -> AnnData: ...

    def _iterate(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        transform: Callable[[torch.Tensor, np.ndarray], torch.Tensor] | None = None,
        progress: bool = False,
        description: str = "KDCPT",
        transform_inputs: Callable | None = None,
        attribute: np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]: ...

    def get_logits(
        self, adata: AnnData | None = None, indices=None, batch_size: int | None = None, component: str = "combined"
    ) -> np.ndarray: ...

    def get_predictions(self, adata: AnnData | None = None, *, batch_size: int | None = None) -> Predictions: ...

    def labels_(self, adata: AnnData | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def get_anndata_manager(self, adata: AnnData, required: bool = False): ...

    def _softmax(self, logits: np.ndarray) -> np.ndarray: ...

    def predict(self, adata: AnnData | None = None, **kwargs) -> pd.Series | pd.DataFrame: ...
