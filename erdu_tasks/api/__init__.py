"""ERDU's HTTP API: events, Alertmanager and PagerDuty in; incidents out."""
