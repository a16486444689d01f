"""Every AnnData key the package reads or writes, in one place.

All names derive from ``key_added`` (default ``"kdcpt"``), so two models can annotate the same
AnnData side by side (``key_added="kdcpt_a"``, ``key_added="kdcpt_b"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import InvalidInputError

DEFAULT_KEY = "kdcpt"


def safe_name(name: str) -> str:
    """A phenotype name usable inside an h5ad key: ``/`` (a path separator in HDF5) → ``_``."""
    return str(name).replace("/", "_")


def basis_key(obsm, basis: str) -> str:
    """The ``.obsm`` key of an embedding named as scanpy names it: ``basis`` itself when ``obsm``
    holds it, else ``"X_" + basis`` (``"umap"`` → ``"X_umap"``).
    """
    return basis if basis in obsm else f"X_{basis}"


@dataclass(frozen=True)
class Keys:
    """Names of the ``.obs``, ``.var``, ``.obsp`` and ``.uns`` entries for one ``key_added``."""

    key_added: str = DEFAULT_KEY

    def __post_init__(self) -> None:
        # every key below starts with key_added; h5ad reads "/" as a path into nested groups and
        # spreads an empty key's entries over .uns, so results could not be found after a save
        if not isinstance(self.key_added, str) or not self.key_added.strip() or "/" in self.key_added:
            raise InvalidInputError(
                f"key_added must be a non-empty name without '/', got {self.key_added!r} "
                "(h5ad files read '/' as nested groups); e.g. key_added='kdcpt_run1'."
            )

    # .obs
    @property
    def pred(self) -> str:
        return f"{self.key_added}_pred"

    def proba(self, phenotype: str) -> str:
        return f"{self.key_added}_proba_{safe_name(phenotype)}"

    @property
    def proba_prefix(self) -> str:
        return f"{self.key_added}_proba_"

    @property
    def confidence(self) -> str:
        return f"{self.key_added}_confidence"

    @property
    def uncertainty(self) -> str:
        return f"{self.key_added}_uncertainty"

    @property
    def prediction_set(self) -> str:
        return f"{self.key_added}_prediction_set"

    @property
    def set_size(self) -> str:
        return f"{self.key_added}_set_size"

    # .var
    @property
    def score(self) -> str:
        return f"{self.key_added}_score"

    @property
    def selected_frac(self) -> str:
        return f"{self.key_added}_selected_frac"

    @property
    def rank(self) -> str:
        return f"{self.key_added}_rank"

    @property
    def key_gene(self) -> str:
        return f"{self.key_added}_key_gene"

    @property
    def key_site(self) -> str:
        return f"{self.key_added}_key_site"

    @property
    def attention(self) -> str:
        return f"{self.key_added}_attention"

    @property
    def attribution(self) -> str:
        return f"{self.key_added}_attribution"

    @property
    def knockout_effect(self) -> str:
        return f"{self.key_added}_knockout_effect"

    # .obs / .obsm of simulated knockouts (knockout(simulate="grn"))
    def ko_score(self, gene: str) -> str:
        """``.obs`` column: the knockout's perturbation score per cell."""
        return f"{self.key_added}_ko_score_{safe_name(gene)}"

    def ko_shift(self, gene: str) -> str:
        """``.obsm`` entry: the knockout's shift of each cell's expected step on an embedding."""
        return f"{self.key_added}_ko_shift_{safe_name(gene)}"

    # .obsp
    @property
    def transitions(self) -> str:
        return f"{self.key_added}_transitions"

    # .obsm
    @property
    def fate_probabilities(self) -> str:
        return f"{self.key_added}_fate_probabilities"

    # .uns
    @property
    def uns(self) -> str:
        return self.key_added

    @property
    def colors(self) -> str:
        return f"{self.pred}_colors"


def check_phenotype_keys(phenotypes, key_added: str = DEFAULT_KEY, where: str = "the labels") -> None:
    """Refuse phenotypes whose names map to one output key (``a/b`` and ``a_b``): one's results would be lost."""
    keys = Keys(key_added)
    seen: dict[str, str] = {}
    for p in map(str, phenotypes):
        col = keys.proba(p)
        if col in seen:
            raise InvalidInputError(
                f"Phenotypes {seen[col]!r} and {p!r} in {where} both map to the column {col!r} "
                "('/' is not allowed in h5ad keys and becomes '_'). Rename one, e.g. "
                f"adata.obs[labels_key] = adata.obs[labels_key].cat.rename_categories({{{p!r}: ...}})."
            )
        seen[col] = p


#: joins the members of a prediction set in ``.obs["{key}_prediction_set"]`` (``"B|T"``)
SET_SEP = "|"


def check_set_names(phenotypes) -> None:
    """Refuse phenotype names holding :data:`SET_SEP`: their prediction sets could not be read back."""
    bad = [p for p in map(str, phenotypes) if SET_SEP in p]
    if bad:
        raise InvalidInputError(
            f"Phenotype name(s) {bad[:3]} contain {SET_SEP!r}, which joins the members of a written "
            f"prediction set ({SET_SEP!r}-joined, e.g. 'B{SET_SEP}T'): a set could not be told from a name. "
            "Rename them before asking for prediction sets, e.g. adata.obs[labels_key] = "
            f"adata.obs[labels_key].cat.rename_categories({{{bad[0]!r}: {bad[0].replace(SET_SEP, '/')!r}}})."
        )


# names of the entries inside ``.uns[key_added]``
UNS_PARAMS = "params"
UNS_CLASSES = "classes"
UNS_TRANSITION = "transition_matrix"
UNS_STATIONARY = "stationary"  # directed chains only
UNS_PHENOTYPE_MASS = "phenotype_mass"  # share of the cells (membership mass) per phenotype
UNS_ENTROPY = "entropy"
UNS_ENTROPY_TOTAL = "entropy_total"
UNS_ENTROPY_TOTAL_NORMALIZED = "entropy_total_normalized"
UNS_KEY_GENES = "key_genes"
UNS_KEY_SITES = "key_sites"  # multi-omics: ranking of regulatory sites
UNS_KEY_FEATURES = "key_features"  # multi-omics: joint ranking of genes and sites
UNS_KNOCKOUT = "knockout"
UNS_KNOCKOUT_SUMMARY = "knockout_summary"
UNS_KNOCKOUT_PARAMS = "knockout_params"
UNS_KNOCKOUT_FATE = "knockout_fate"
UNS_KNOCKOUT_FLUX = "knockout_flux"
UNS_KNOCKOUT_SHIFT_MODE = "knockout_shift_mode"  # gene → the mode its .obs score / .obsm shift are of
UNS_KNOCKOUT_SHIFT_BASIS = "knockout_shift_basis"  # gene → the .obsm embedding its shift was projected on
UNS_FLUX = "flux"  # directed chains only
UNS_TRANSITION_METHOD = "transition_method"
UNS_DIRECTION = "direction"
UNS_FATE = "fate"
UNS_FATE_TERMINAL = "fate_terminal"
UNS_FATE_PARAMS = "fate_params"
UNS_METRICS = "metrics"
UNS_CALIBRATION = "calibration"
UNS_HISTORY = "history"
UNS_VERSION = "version"
