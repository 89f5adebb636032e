"""Federated statistics: "how different are our hospitals?" on FLARE's own statistics workflow.

Each site's :class:`~oncofl.fedstats.site.ImagingStatistics` reads its datalist through its site config (the task's
readers), FLARE's ``StatisticsPrivacyFilter`` cleanses what leaves the site, the server's
:class:`~oncofl.fedstats.server.GroupStatisticsController` aggregates per dataset (group) and feature, and
:class:`~oncofl.fedstats.server.StatsPlotWriter` writes the JSON and the plots. See docs/statistics.md.
"""
