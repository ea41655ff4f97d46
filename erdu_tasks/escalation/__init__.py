"""Escalation: the one way into escalated, the gates every role asks (silence, inhibition, rate limit, approval), policies, durable runs, the sweeper and the notification channels (channels/).

May import: store, model, names, errors, settings, catalog, timecfg."""
