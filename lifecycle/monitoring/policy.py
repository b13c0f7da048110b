"""The error-budget policy: a registry gate that blocks promotions of a model with an exhausted
budget, an open page-severity alert or an open incident."""
