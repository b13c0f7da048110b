"""Webhooks for registry events (Standard Webhooks signing), delivered by a job on the
`default` queue. `emit` is called inside the transaction of the change it reports."""


def emit(event, obj, data):
    """Queue a delivery of `event` to every active webhook subscribed to it, once the
    transaction commits."""
