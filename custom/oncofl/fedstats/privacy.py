"""What leaves a site in the federated statistics, on top of FLARE's own cleansers.

FLARE's ``MinCountCleanser`` removes a below-minimum feature's statistics but keeps its *count* (and failure count),
and the result still lists the group in its feature list; the server would then add that count to the global count
(biasing the global mean, which FLARE computes as global sum / global count). Run after FLARE's cleansers,
:class:`GroupMinCountCleanser` drops every group with fewer cases than the minimum entirely, and the count of any
feature below the minimum; :class:`SiteStatisticsPrivacyFilter` (FLARE's filter) also drops groups that were
cleansed away from the feature list it sends. A below-minimum group never leaves the site, not even its name.
"""

from __future__ import annotations

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_component import FLComponent
from nvflare.app_common.app_constant import StatisticsConstants as StC
from nvflare.app_common.filters.statistics_privacy_filter import StatisticsPrivacyFilter
from nvflare.app_common.statistics.statisitcs_objects_decomposer import fobs_registration
from nvflare.app_common.statistics.statistics_privacy_cleanser import StatisticsPrivacyCleanser
from nvflare.fuel.utils import fobs

CASES = "unreadable"  # the feature whose count is a group's number of cases (oncofl.fedstats.site.CASES)


class GroupMinCountCleanser(FLComponent, StatisticsPrivacyCleanser):
    """Drop every group (FLARE dataset) with fewer than ``min_count`` cases, and the counts FLARE keeps for features
    below the minimum. Logs ``RECORD`` with how many groups it dropped.

    Args:
        min_count: the minimum number of cases a group needs to leave the site.
        case_feature: the feature whose count is the group's number of cases.
    """

    RECORD = "group minimum count applied"

    def __init__(self, min_count: int, case_feature: str = CASES) -> None:
        super().__init__()
        if min_count < 0:
            raise ValueError(f"min_count must be >= 0, got {min_count}")
        self.min_count = min_count
        self.case_feature = case_feature

    def apply(self, statistics: dict, client_name: str) -> tuple[dict, bool]:
        counts = statistics.get(StC.STATS_COUNT, {})
        failures = statistics.get(StC.STATS_FAILURE_COUNT, {})
        small = {ds for ds, per in counts.items() if per.get(self.case_feature, 0) < self.min_count}
        low = {
            (ds, f)
            for ds, per in counts.items()
            for f, n in per.items()
            if n - failures.get(ds, {}).get(f, 0) < self.min_count
        }
        modified = False
        for per_ds in statistics.values():
            for ds in list(per_ds):
                if ds in small:
                    del per_ds[ds]
                    modified = True
        for key in (StC.STATS_COUNT, StC.STATS_FAILURE_COUNT):
            for ds, per in statistics.get(key, {}).items():
                for f in [f for f in per if (ds, f) in low]:
                    del per[f]
                    modified = True
        self.logger.info(
            f"{self.RECORD} for client {client_name}: min_count {self.min_count}, {len(small)} group(s) dropped"
        )
        return statistics, modified


class SiteStatisticsPrivacyFilter(StatisticsPrivacyFilter):
    """FLARE's ``StatisticsPrivacyFilter`` (the cleansers ``result_cleanser_ids``, in order), and then the result's
    feature list keeps only the groups that still have statistics.

    Args:
        result_cleanser_ids: the component ids of the cleansers, in the order they run.
    """

    def __init__(self, result_cleanser_ids: list[str]) -> None:
        super().__init__(result_cleanser_ids)
        fobs_registration()

    def filter_stats_statistics(self, dxo: DXO, client_name: str, filters: list) -> DXO:
        dxo = super().filter_stats_statistics(dxo, client_name, filters)
        result = dxo.data
        if StC.STATS_FEATURES not in result:
            return dxo
        statistics = fobs.loads(result[result[StC.STATISTICS_TASK_KEY]])
        kept = {ds for per_ds in statistics.values() for ds, per in per_ds.items() if per}
        features = fobs.loads(result[StC.STATS_FEATURES])
        pruned = {ds: f for ds, f in features.items() if ds in kept}
        if pruned == features:
            return dxo
        result[StC.STATS_FEATURES] = fobs.dumps(pruned)
        return DXO(data_kind=DataKind.STATISTICS, data=result, meta=dxo.meta)
