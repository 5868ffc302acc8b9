"""Post-market monitoring: per-case facts from infer summaries, drift and QC-rate statistics, the dashboard."""
