"""Models by name: the catalog of configured models, the memory budget, and the
manager that loads them on demand, keeps them warm and unloads them (issue 20, ADR 0034)."""
