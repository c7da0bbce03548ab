"""Grafana dashboards, provisioning and Prometheus alert rules of serve-app, generated from
serve_app/metrics.py (see dashboards/README.md)."""
