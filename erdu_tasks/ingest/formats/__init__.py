"""Wire formats turned into Events: ERDU's own, Prometheus Alertmanager webhook v4, PagerDuty Events v2."""
