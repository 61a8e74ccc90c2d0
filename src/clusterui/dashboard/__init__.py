"""The Textual dashboard. It talks to the supervisor only through the client API."""

from clusterui.dashboard.app import DashboardApp, run_dashboard

__all__ = ["DashboardApp", "run_dashboard"]
