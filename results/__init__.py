"""The results layer: one typed run result, its figures, comparisons and tables (imports no other package here)."""
