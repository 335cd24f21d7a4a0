"""Alarms and notifications: conditions found in the event log and by periodic checks become
alarms (raised once, resolved when they clear) whose messages go through an outbox in the
catalog to webhooks and mail. docs/monitoring.md is the admin's guide."""
