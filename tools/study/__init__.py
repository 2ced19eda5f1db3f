"""The reproduction study of docs/results.md (tools/run_study.py): pipeline (stages), summary (statistics,
tables), plots."""
