"""The build report: a typed :class:`~factory.report.schema.Report` (the schema of ``report.json``) assembled from
a :class:`~factory.report.outcome.BuildOutcome`, rendered as Markdown, HTML and plots, and published with the
shipped model (:mod:`factory.report.publish`)."""

from factory.report.schema import SCHEMA_VERSION, Report

CHANGES_NO_RESULT = True

__all__ = ["SCHEMA_VERSION", "Report"]
