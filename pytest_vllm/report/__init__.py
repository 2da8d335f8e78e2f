"""Reports of a run: terminal tables, results.json, summary.md (GitHub step summary), report.html."""
