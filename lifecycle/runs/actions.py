"""Actions a run's page offers that belong to apps above runs (the registry's "Register as a
model version"). Those apps register a provider here, from their ready(), so runs never
imports them and the dependencies keep pointing one way.

A provider is a function `(run, user) -> [(label, url), ...]`; an empty list when it has
nothing to offer this user for this run.
"""
_providers = []


def run_action(func):
    """Register `func` as a provider of run-page actions (used as a decorator)."""
    if func not in _providers:
        _providers.append(func)
    return func


def run_actions(run, user):
    """Every registered provider's (label, url) pairs for `run` and `user`, in registration order."""
    return [action for func in _providers for action in (func(run, user) or [])]
