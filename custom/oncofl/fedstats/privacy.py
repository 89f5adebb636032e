"""What leaves a site in the federated statistics, on top of FLARE's own cleansers.

Every case is in ``all`` and in at most one group of each *partition* (``split``: training / validation; ``label``;
``vendor``; ``kernel``). A group that is merely left out could still be computed by subtraction: ``all`` minus the
partition's other groups. So suppression works per partition (:func:`suppress`): a partition leaves only if each of
its groups *and* the remainder (``all`` minus the partition's groups) is empty or holds at least ``min_count``
distinct readable images; otherwise none of its groups leaves. Per feature the same holds for the feature's count in
every group and in the remainder, and for the class counts of the ``label`` feature (a group with one malignant
case does not send its ``label`` statistics, nor does any group of its partition).

:func:`suppress` runs twice: inside :class:`~oncofl.fedstats.site.ImagingStatistics` (site-installed code, with the
site's floor ``stats_min_count``, so a job without any filter gets no more), and in :class:`GroupMinCountCleanser`
on the result, after FLARE's cleansers. :class:`SiteStatisticsPrivacyFilter` (FLARE's filter) also refuses any group
or feature name outside our vocabulary, and prunes the feature list it sends to the (group, feature) pairs whose
counts are sent. With ``min_count`` set it is also a site's own filter (``local/privacy.json``): it then runs its own
cleansers at that floor after the job's, and passes every non-statistics result through unchanged.
"""

from __future__ import annotations

import logging

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_component import FLComponent
from nvflare.app_common.app_constant import StatisticsConstants as StC
from nvflare.app_common.filters.statistics_privacy_filter import StatisticsPrivacyFilter
from nvflare.app_common.statistics.min_count_cleanser import MinCountCleanser
from nvflare.app_common.statistics.min_max_cleanser import AddNoiseToMinMax
from nvflare.app_common.statistics.statisitcs_objects_decomposer import fobs_registration
from nvflare.app_common.statistics.statistics_privacy_cleanser import StatisticsPrivacyCleanser
from nvflare.fuel.utils import fobs

from .vocabulary import ALL, CASES, INTENSITY, LABEL, LEVEL, group_names, partition_of

logger = logging.getLogger(__name__)

SIZE = "#images"  # the cell of a group's number of distinct readable images
IMAGE_FEATURE = "matrix_rows"  # in a result: one value per readable image and group, its count is the group's SIZE
# every feature any statistics task may send (oncofl.fedstats.site.features_of); anything else is refused
ALL_FEATURES = (
    CASES, LABEL, "matrix_rows", "matrix_cols", "num_slices", "slice_thickness_mm", "pixel_spacing_mm",
    "field_strength_t", LEVEL, INTENSITY,
)  # fmt: skip
REFUSED = "statistics: a group or feature name outside the vocabulary was dropped"  # fixed text, local log only


def class_cell(feature: str, value: object) -> str:
    """The cell name of one class of a feature (``label#1``: the cases of class 1)."""
    return f"{feature}#{value}"


def _ok(n: int, min_count: int) -> bool:
    """Whether a cell may be seen: empty, or at least the minimum (a negative remainder -- cases of one image in
    two groups of a partition -- by its size)."""
    return n == 0 or abs(n) >= min_count


def suppress(cells: dict[str, dict[str, int]], min_count: int) -> dict[str, set[str]]:
    """Which (group, feature) pairs may leave the site under the partition rule (see the module docstring).

    Args:
        cells: ``{group: {cell: n}}``: :data:`SIZE` (the group's distinct readable images), every feature's count,
            and class counts named by :func:`class_cell`.
        min_count: the minimum a group, remainder, feature count or class count needs (>= 1).

    Returns:
        ``{group: features that may leave}``; a group that is absent leaves not at all, not even its name.
    """
    top = cells.get(ALL, {})
    if not _ok(top.get(SIZE, 0), min_count):
        return {}
    bad = {c.split("#")[0] for c, n in top.items() if c != SIZE and not _ok(n, min_count)}
    allowed = {f for f, n in top.items() if f != SIZE and "#" not in f and n > 0} - bad
    kept = {ALL: allowed}
    partitions: dict[str, list[str]] = {}
    for group in cells:
        if partition_of(group):
            partitions.setdefault(partition_of(group), []).append(group)
    for groups in partitions.values():
        kept |= _partition(cells, groups, allowed, min_count)
    return {group: features for group, features in kept.items() if features}


def _partition(cells: dict, groups: list[str], allowed: set[str], min_count: int) -> dict[str, set[str]]:
    """The features each group of one partition may send: none if a group or the remainder is below the minimum in
    images; per feature, none if a count or class count of a group or of the remainder is below it."""
    top = cells[ALL]

    def fine(cell: str) -> bool:
        parts = [cells[g].get(cell, 0) for g in groups]
        return all(_ok(n, min_count) for n in parts) and _ok(top.get(cell, 0) - sum(parts), min_count)

    if not fine(SIZE):
        return {}
    names = ({c for g in groups for c in cells[g]} | set(top)) - {SIZE}
    bad = {c.split("#")[0] for c in names if not fine(c)}
    return {g: {f for f in allowed - bad if cells[g].get(f, 0) > 0} for g in groups}


def result_cells(statistics: dict) -> dict[str, dict[str, int]]:
    """The cells of a statistics result (``{statistic: {group: {feature: value}}}``) as :func:`suppress` needs them:
    counts less failures; SIZE and the intensity's count from :data:`IMAGE_FEATURE`'s count (one per image); the
    label's class counts from its sum (classes 0 / 1) or, in the second round, its histogram bins.

    Args:
        statistics: one site's statistics, as FLARE's cleansers get them.
    """
    counts, failures = statistics.get(StC.STATS_COUNT, {}), statistics.get(StC.STATS_FAILURE_COUNT, {})
    cells: dict[str, dict[str, int]] = {}
    for ds, per in counts.items():
        got = {f: int(n) - int(failures.get(ds, {}).get(f, 0) or 0) for f, n in per.items()}
        got[SIZE] = got.get(IMAGE_FEATURE, 0)
        if INTENSITY in got:
            got[INTENSITY] = got[SIZE]
        total = statistics.get(StC.STATS_SUM, {}).get(ds, {}).get(LABEL)
        histogram = statistics.get(StC.STATS_HISTOGRAM, {}).get(ds, {}).get(LABEL)
        if LABEL in got and total is not None:
            positives = round(float(total))
            got |= {class_cell(LABEL, 1): positives, class_cell(LABEL, 0): got[LABEL] - positives}
        elif LABEL in got and histogram is not None:
            got |= {class_cell(LABEL, i): int(b.sample_count) for i, b in enumerate(histogram.bins)}
        cells[ds] = got
    return cells


class GroupMinCountCleanser(FLComponent, StatisticsPrivacyCleanser):
    """Keep only the (group, feature) pairs :func:`suppress` allows, counts included (FLARE's ``MinCountCleanser``
    keeps a below-minimum feature's count). Logs ``RECORD`` with how many groups it dropped.

    Args:
        min_count: the minimum (>= 1) of images or cases a group, remainder, feature or class needs to leave.
    """

    RECORD = "group minimum count applied"

    def __init__(self, min_count: int) -> None:
        super().__init__()
        if not isinstance(min_count, int) or min_count < 1:
            raise ValueError(f"min_count must be an integer >= 1, got {min_count}")
        self.min_count = min_count

    def apply(self, statistics: dict, client_name: str) -> tuple[dict, bool]:
        """Drop from ``statistics`` every (group, feature) pair the partition rule does not allow.

        Args:
            statistics: ``{statistic: {group: {feature: value}}}``, changed in place.
            client_name: this site's name (for the log).

        Returns:
            the statistics and whether anything was dropped.
        """
        kept = suppress(result_cells(statistics), self.min_count)
        modified, groups = False, set()
        for per_ds in statistics.values():
            for ds in list(per_ds):
                groups.add(ds)
                drop = [f for f in per_ds[ds] if f not in kept.get(ds, ())]
                for f in drop:
                    del per_ds[ds][f]
                if ds not in kept:
                    del per_ds[ds]
                modified = modified or bool(drop) or ds not in kept
        self.logger.info(
            f"{self.RECORD} for client {client_name}: min_count {self.min_count}, "
            f"{len(groups - set(kept))} group(s) dropped"
        )
        return statistics, modified


def drop_unknown_names(statistics: dict, features: dict | None, allowed: tuple[str, ...]) -> bool:
    """Drop, in place, every group not in the vocabulary and every feature not in ``allowed`` (a fixed line in the
    site's log, never the name); True if anything was dropped.

    Args:
        statistics: ``{statistic: {group: {feature: value}}}``.
        features: ``{group: [Feature]}`` of the first round, or None.
        allowed: the feature names that may leave.
    """
    groups, dropped = group_names(), False
    for per_ds in [*statistics.values(), *([features] if features is not None else [])]:
        for ds in list(per_ds):
            if ds not in groups:
                del per_ds[ds]
                dropped = True
            elif isinstance(per_ds[ds], dict):
                for f in [f for f in per_ds[ds] if f not in allowed]:
                    del per_ds[ds][f]
                    dropped = True
            else:
                kept = [f for f in per_ds[ds] if f.feature_name in allowed]
                dropped = dropped or len(kept) != len(per_ds[ds])
                per_ds[ds] = kept
    if dropped:
        logger.warning(REFUSED)
    return dropped


def prune_features(features: dict, statistics: dict) -> dict:
    """The feature list without any (group, feature) pair whose count is not sent.

    Args:
        features: ``{group: [Feature]}``.
        statistics: the cleansed statistics.
    """
    counts = statistics.get(StC.STATS_COUNT, {})
    pruned = {ds: [f for f in fs if f.feature_name in counts.get(ds, {})] for ds, fs in features.items()}
    return {ds: fs for ds, fs in pruned.items() if fs}


class SiteStatisticsPrivacyFilter(StatisticsPrivacyFilter):
    """FLARE's ``StatisticsPrivacyFilter`` with oncofl's checks: names outside the vocabulary refused first, then the
    job's cleansers ``result_cleanser_ids`` in order, then (``min_count`` set: a site's own filter in
    ``local/privacy.json``) FLARE's ``MinCountCleanser``, ``AddNoiseToMinMax`` and :class:`GroupMinCountCleanser` at
    that floor; the feature list sent keeps only the (group, feature) pairs whose counts are sent. A result that is
    not statistics passes unchanged (FLARE's ``DXOFilter`` filters ``DataKind.STATISTICS`` only).

    Args:
        result_cleanser_ids: the component ids of the job's cleansers, in the order they run (none in a site scope).
        min_count: the site's floor; None: only the job's cleansers run.
        features: the feature names that may leave (default: every statistics task's, :data:`ALL_FEATURES`).
        min_noise: the site's own min / max noise, lower level (with ``min_count``).
        max_noise: its upper level.
    """

    def __init__(
        self,
        result_cleanser_ids: list[str] | None = None,
        min_count: int | None = None,
        features: list[str] | None = None,
        min_noise: float = 0.1,
        max_noise: float = 0.3,
    ) -> None:
        super().__init__(list(result_cleanser_ids or []))
        fobs_registration()
        self.allowed = tuple(features or ALL_FEATURES)
        self.own: list[StatisticsPrivacyCleanser] = []
        if min_count is not None:
            self.own = [
                MinCountCleanser(min_count=min_count),
                AddNoiseToMinMax(min_noise_level=min_noise, max_noise_level=max_noise),
                GroupMinCountCleanser(min_count=min_count),
            ]

    def filter_stats_statistics(self, dxo: DXO, client_name: str, filters: list) -> DXO:
        """Refuse unknown names, run the cleansers, prune the feature list (see the class docstring).

        Args:
            dxo: the site's statistics result.
            client_name: this site's name.
            filters: the job's cleansers, in order.
        """
        result = dxo.data
        task = result[StC.STATISTICS_TASK_KEY]
        statistics = fobs.loads(result[task])
        features = fobs.loads(result[StC.STATS_FEATURES]) if StC.STATS_FEATURES in result else None
        drop_unknown_names(statistics, features, self.allowed)
        for cleanser in [*filters, *self.own]:
            statistics, _ = cleanser.apply(statistics, client_name)
        result[task] = fobs.dumps(statistics)
        if features is not None:
            result[StC.STATS_FEATURES] = fobs.dumps(prune_features(features, statistics))
        return DXO(data_kind=DataKind.STATISTICS, data=result, meta=dxo.meta)
