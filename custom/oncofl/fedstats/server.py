"""The server side of the federated statistics: FLARE's controller with per-group validation, and its JSON writer with
plots next to the JSON.

FLARE's ``StatisticsController`` aborts the job unless *every* dataset came from at least ``min_clients`` sites; our
groups (``vendor=ge``, ``kernel=Br40``) exist at some sites only, and a site's below-minimum group is dropped before
it leaves the site. :class:`GroupStatisticsController` keeps FLARE's check that every site sent every statistic, and
lets a group come from fewer sites (logged).
"""

from __future__ import annotations

import json
from pathlib import Path

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.statistics.json_stats_file_persistor import JsonStatsFileWriter
from nvflare.app_common.workflows.statistics_controller import StatisticsController

from .plots import write_plots


class GroupStatisticsController(StatisticsController):
    """FLARE's ``StatisticsController`` (same arguments); see the module docstring for what it checks."""

    def _validate_min_clients(self, min_clients: int, client_statistics: dict) -> bool:
        """Whether the job may go on: some site sent statistics and every statistic came from ``min_clients`` sites;
        a group sent by fewer sites is only logged.

        Args:
            min_clients: the sites the job needs.
            client_statistics: ``{statistic: {site: {group: {feature: value}}}}`` as received.
        """
        if not client_statistics:
            self.logger.error(f"no site sent statistics; expected {min_clients}, aborting the job")
            return False
        for statistic, clients in client_statistics.items():
            if len(clients) < min_clients:
                self.logger.warning(f"only {len(clients)} of {min_clients} sites sent '{statistic}', aborting the job")
                return False
        groups: dict[str, set[str]] = {}
        for clients in client_statistics.values():
            for client, per_ds in clients.items():
                for ds, per in per_ds.items():
                    if per:
                        groups.setdefault(ds, set()).add(client)
        fewer = sorted(ds for ds, sites in groups.items() if len(sites) < min_clients)
        if fewer:
            self.logger.info(f"groups reported by fewer than {min_clients} sites: {', '.join(fewer)}")
        return True


class StatsPlotWriter(JsonStatsFileWriter):
    """FLARE's ``JsonStatsFileWriter``, then the plots (:func:`oncofl.fedstats.plots.write_plots`) in the same folder.

    Args:
        output_path: the JSON file, relative to the job's folder on the server.
        json_encoder_path: as FLARE's writer.
    """

    def save(self, data: dict, overwrite_existing, fl_ctx: FLContext) -> None:
        """Write the JSON (FLARE's writer), then the plots next to it; a plot that fails is logged, not fatal.

        Args:
            data: the global and per-site statistics.
            overwrite_existing: as FLARE's writer.
            fl_ctx: FLARE's context.
        """
        super().save(data, overwrite_existing, fl_ctx)
        path = Path(self.get_output_path(fl_ctx))
        try:
            written = write_plots(json.loads(path.read_text()), path.parent)
        except Exception:  # the JSON is the result; a plot that fails is logged, not fatal
            self.log_exception(fl_ctx, "statistics plots could not be written")
            return
        self.log_info(fl_ctx, f"statistics plots written: {', '.join(p.name for p in written)}")
