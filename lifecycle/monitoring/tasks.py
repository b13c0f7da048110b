"""The monitoring queue's jobs and the maintenance pass's monitoring steps. The work lives in
the modules named below; importing them here registers their tasks and steps where RQ and the
maintenance pass look them up."""
