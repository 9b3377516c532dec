"""auralflow-dist."""
