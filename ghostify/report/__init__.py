"""Cost report: counting (a separate concern with one convention), Eq. 4/5, rendering."""

from ghostify.report.counting import CONVENTION, MacCount, count_macs, count_params
from ghostify.report.report import Report, build_report

__all__ = ["CONVENTION", "MacCount", "count_macs", "count_params", "Report", "build_report"]
